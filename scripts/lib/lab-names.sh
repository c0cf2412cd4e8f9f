# shellcheck shell=bash
# lab-names.sh: names and addresses of the WAN lab (scripts/lab.sh), for lab.sh and the scripts
# that drive it (bench-wan.sh, lab-test.sh, migrate.sh). Source it; it only sets variables.
#
# LAB_PREFIX (default empty) prefixes every namespace, the link's name and the run directory,
# so a second, independent lab can run beside the first (e.g. LAB_PREFIX=dev-).

# shellcheck disable=SC2034  # used by the sourcing scripts
{
    LAB_PREFIX=${LAB_PREFIX:-}
    NS_SRC=${LAB_PREFIX}src-host
    NS_GWA=${LAB_PREFIX}gw-a
    NS_WAN=${LAB_PREFIX}wan
    NS_GWB=${LAB_PREFIX}gw-b
    NS_DST=${LAB_PREFIX}dst-host
    LAB_NAMESPACES=("$NS_SRC" "$NS_GWA" "$NS_WAN" "$NS_GWB" "$NS_DST")
    LINK_NAME=${LINK_NAME:-${LAB_PREFIX}lab-wan}
    LAB_RUN_DIR=${LAB_RUN_DIR:-/run/${LAB_PREFIX}lmas-lab}

    SRC_IP=10.0.1.2
    GWA_LAN_IP=10.0.1.1
    GWA_WAN_IP=10.0.2.1
    WAN_IP=10.0.2.254
    GWB_WAN_IP=10.0.2.2
    GWB_LAN_IP=10.0.3.1
    DST_IP=10.0.3.2

    # The gateways' ports: tunnel on gw-b, listen ingress on gw-a, TPROXY listener on gw-a;
    # the destination port that lab transfers (and migrations) use on dst-host. A second listen
    # ingress (INGRESS2_PORT -> TARGET2_PORT) carries a second, concurrent migration
    # (migrate.sh --slot 1): another migration group in the gateways.
    GW_PORT=7700
    INGRESS_PORT=6000
    TPROXY_PORT=6001
    TARGET_PORT=5000
    INGRESS2_PORT=6002
    TARGET2_PORT=5001
}
