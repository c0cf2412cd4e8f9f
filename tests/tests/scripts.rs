//! The bring-up scripts and the systemd unit: every script answers `--help`; install.sh stages
//! the binary, unit and examples into a temporary destdir and changes nothing the second time;
//! the unit passes `systemd-analyze verify` and keeps its stop timeout above the drain deadline;
//! host-tune.sh `--check` reports without changing anything; tproxy-rules.sh is idempotent (in
//! a namespace of its own); the scripts that change the system refuse clearly without root.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use lmas_tests::{
    lmas_bin, netns, run_with_timeout, script, temp_dir, workspace_root, COMMAND_TIMEOUT,
};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn every_script_answers_help() {
    let mut names: Vec<String> = fs::read_dir(workspace_root().join("scripts"))
        .expect("scripts/")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".sh"))
        .collect();
    names.sort();
    assert!(names.len() >= 10, "{names:?}");
    for name in &names {
        let out = script(name, &["--help"]);
        assert!(out.status.success(), "{name} --help: {}", out.status);
        assert!(!out.stdout.is_empty(), "{name} --help printed nothing");
    }
    for name in ["host-tune.sh", "tproxy-rules.sh", "install.sh"] {
        let out = script(name, &["--help"]);
        assert!(
            text(&out.stdout).starts_with(&format!("Usage: scripts/{name}")),
            "{name}: {}",
            text(&out.stdout)
        );
        let bad = script(name, &["--no-such-option"]);
        assert_eq!(bad.status.code(), Some(2), "{name} with an unknown option");
        assert!(text(&bad.stderr).contains("unknown argument"), "{name}");
    }
}

/// Path (relative to `root`) -> (mode, contents) of every file below `root`.
fn tree(root: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    use std::os::unix::fs::PermissionsExt;
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
        for e in fs::read_dir(dir).expect("read_dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let mode = fs::metadata(&p).expect("stat").permissions().mode() & 0o7777;
                let rel = p.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, (mode, fs::read(&p).expect("read")));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn install(dest: &Path) -> Output {
    let bin = lmas_bin();
    let out = script(
        "install.sh",
        &[
            "--destdir",
            dest.to_str().unwrap(),
            "--prefix",
            "/opt/lmas",
            "--bin",
            bin.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "install.sh failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    out
}

#[test]
fn install_stages_everything_and_is_idempotent() {
    let (dir, _tmp) = temp_dir("lmas-e2e-install-");
    let dest = dir.join("root");
    let first = install(&dest);
    let files = tree(&dest);
    let expect = [
        ("opt/lmas/bin/lmas", 0o755),
        ("opt/lmas/lib/lmas/host-tune.sh", 0o755),
        ("opt/lmas/lib/lmas/tproxy-rules.sh", 0o755),
        ("opt/lmas/lib/lmas/dpdk-setup.sh", 0o755),
        ("opt/lmas/lib/lmas/lib/common.sh", 0o644),
        ("opt/lmas/lib/lmas/lib/dpdk_check.py", 0o644),
        ("opt/lmas/share/doc/lmas/DEPLOYMENT.md", 0o644),
        ("etc/lmas/examples/gw-appliance.toml", 0o644),
        ("etc/lmas/examples/gw-local.toml", 0o644),
        ("etc/lmas/examples/gw-remote.toml", 0o644),
        ("etc/systemd/system/lmas@.service", 0o644),
    ];
    for (path, mode) in expect {
        let (got, _) = files
            .get(path)
            .unwrap_or_else(|| panic!("{path} not installed; got {:?}", files.keys()));
        assert_eq!(*got, mode, "{path}: mode {got:o}");
    }
    assert_eq!(files.len(), expect.len(), "{:?}", files.keys());
    assert_eq!(
        files["opt/lmas/bin/lmas"].1,
        fs::read(lmas_bin()).unwrap(),
        "the installed binary is not the one given"
    );
    let unit = text(&files["etc/systemd/system/lmas@.service"].1);
    for placeholder in ["@BINDIR@", "@SYSCONFDIR@", "@DOCDIR@"] {
        assert!(
            !unit.contains(placeholder),
            "{placeholder} left in:\n{unit}"
        );
    }
    assert!(
        unit.contains("ExecStart=/opt/lmas/bin/lmas run --config /etc/lmas/%i.toml"),
        "{unit}"
    );
    assert!(
        text(&first.stderr).contains(&format!("{} file(s) changed", expect.len())),
        "{}",
        text(&first.stderr)
    );

    // The installed scripts find their helpers.
    let out = run_with_timeout(
        Command::new(dest.join("opt/lmas/lib/lmas/host-tune.sh")).arg("--help"),
        COMMAND_TIMEOUT,
    )
    .expect("installed host-tune.sh");
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Twice: nothing changes, and it says so.
    let second = install(&dest);
    assert_eq!(tree(&dest), files, "a second install changed the tree");
    let log = text(&second.stderr);
    assert!(log.contains("0 file(s) changed"), "{log}");
    assert!(!log.contains("installed "), "{log}");
}

#[test]
fn the_unit_verifies_and_outlives_the_drain() {
    let (dir, _tmp) = temp_dir("lmas-e2e-unit-");
    let dest = dir.join("root");
    install(&dest);
    let unit = fs::read_to_string(dest.join("etc/systemd/system/lmas@.service")).unwrap();
    for line in [
        "User=lmas",
        "AmbientCapabilities=CAP_NET_ADMIN",
        "CapabilityBoundingSet=CAP_NET_ADMIN",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "RuntimeDirectory=lmas",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "KillSignal=SIGTERM",
    ] {
        assert!(unit.lines().any(|l| l == line), "the unit lacks {line:?}");
    }
    // systemd must not kill the gateway mid-drain (default gateway.drain_timeout_secs: 30).
    let stop: u64 = unit
        .lines()
        .find_map(|l| l.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(
        stop > 30 + 5,
        "TimeoutStopSec={stop} leaves no room after a 30 s drain"
    );

    let Ok(v) = run_with_timeout(
        Command::new("systemd-analyze").arg("--version"),
        COMMAND_TIMEOUT,
    ) else {
        eprintln!("SKIP: systemd-analyze verify: systemd-analyze is not installed");
        return;
    };
    assert!(v.status.success());
    // verify checks that ExecStart's binary exists: point it at the staged one.
    let staged = dest.join("opt/lmas/bin");
    let check = dir.join("lmas@test.service");
    fs::write(
        &check,
        unit.replace("/opt/lmas/bin", staged.to_str().unwrap()),
    )
    .unwrap();
    let out = run_with_timeout(
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&check),
        COMMAND_TIMEOUT,
    )
    .expect("systemd-analyze verify");
    // It exits 0 on unknown or bad directives too, only warning: any output is a failure.
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "systemd-analyze verify ({}):\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

const TUNED: [&str; 6] = [
    "net.core.rmem_max",
    "net.core.wmem_max",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
    "net.ipv4.tcp_slow_start_after_idle",
    "net.ipv4.tcp_allowed_congestion_control",
];

const SLOW_START: &str = "/proc/sys/net/ipv4/tcp_slow_start_after_idle";

fn sysctls() -> Vec<String> {
    TUNED
        .iter()
        .map(|n| {
            fs::read_to_string(format!("/proc/sys/{}", n.replace('.', "/"))).unwrap_or_default()
        })
        .collect()
}

#[test]
fn host_tune_check_reports_and_changes_nothing() {
    let before = sysctls();
    let out = script("host-tune.sh", &["--check", "--iface", "lo"]);
    let report = text(&out.stdout);
    eprintln!("{report}{}", text(&out.stderr));
    for name in &TUNED[..5] {
        assert!(
            report.lines().any(|l| l.contains(name)),
            "no line for {name}:\n{report}"
        );
    }
    assert!(report.contains("lo: MTU"), "{report}");
    let changes = report.lines().filter(|l| l.starts_with("change ")).count();
    match out.status.code() {
        Some(0) => assert_eq!(changes, 0, "exit 0 but changes listed:\n{report}"),
        Some(1) => assert!(changes > 0, "exit 1 but no change listed:\n{report}"),
        other => panic!(
            "host-tune.sh --check exited {other:?}: {}",
            text(&out.stderr)
        ),
    }
    assert_eq!(sysctls(), before, "--check changed a sysctl");

    // Applying with a target below every current value must change nothing either (this is
    // what a second run after a real one looks like; never raise this host's limits in a test).
    if !is_root() {
        eprintln!("SKIP: host-tune.sh apply mode: needs root");
        return;
    }
    // The one setting that is not a limit: make it what the script wants first, and put the
    // host's value back afterwards.
    let slow_start = fs::read_to_string(SLOW_START).unwrap_or_default();
    let _ = fs::write(SLOW_START, "0");
    let before = sysctls();
    let out = script("host-tune.sh", &["--buffer", "4096", "--iface", "lo"]);
    let after = sysctls();
    let _ = fs::write(SLOW_START, slow_start.trim());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nothing to change"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !text(&out.stdout).contains("changed"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        after, before,
        "a run with nothing to raise changed a sysctl"
    );
}

#[test]
fn tproxy_rules_are_idempotent() {
    if netns::skip_unless_available("tproxy_rules_are_idempotent") {
        return;
    }
    if run_with_timeout(Command::new("nft").arg("--version"), COMMAND_TIMEOUT).is_err() {
        eprintln!("SKIP: tproxy_rules_are_idempotent: nft is not installed");
        return;
    }
    let ns = netns::NetNs::new("tprules").expect("namespace");
    let path = workspace_root().join("scripts/tproxy-rules.sh");
    let run = |args: &[&str]| {
        let mut cmd = ns.command(path.to_str().unwrap());
        cmd.args(args);
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT).expect("tproxy-rules.sh")
    };
    let in_ns = |prog: &str, args: &[&str]| {
        let mut cmd = ns.command(prog);
        cmd.args(args);
        text(
            &run_with_timeout(&mut cmd, COMMAND_TIMEOUT)
                .expect(prog)
                .stdout,
        )
    };
    let up = [
        "up",
        "--port",
        "6001",
        "--dports",
        "49152-49215",
        "--iif",
        "lan0",
    ];
    for _ in 0..2 {
        let out = run(&up);
        assert!(out.status.success(), "up: {}", text(&out.stderr));
    }
    assert!(run(&["status"]).status.success(), "status after up");
    let rules = in_ns("nft", &["list", "table", "ip", "lmas"]);
    assert_eq!(rules.matches("tproxy to :6001").count(), 1, "{rules}");
    assert_eq!(rules.matches("socket transparent 1").count(), 1, "{rules}");
    assert!(
        rules.contains("iifname \"lan0\" tcp dport 49152-49215"),
        "{rules}"
    );
    assert_eq!(
        in_ns("ip", &["rule", "show"])
            .matches("fwmark 0x1 lookup 100")
            .count(),
        1
    );
    assert!(in_ns("ip", &["route", "show", "table", "100"]).contains("local default dev lo"));

    for _ in 0..2 {
        let out = run(&["down"]);
        assert!(out.status.success(), "down: {}", text(&out.stderr));
    }
    assert_eq!(run(&["status"]).status.code(), Some(1), "status after down");
    assert!(!in_ns("ip", &["rule", "show"]).contains("fwmark"));
    let bad = run(&["up", "--port", "x", "--dports", "1"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("--port"));
}

#[test]
fn scripts_that_change_the_system_refuse_clearly_without_root() {
    let root = workspace_root();
    // Run as nobody when we are root; as ourselves otherwise.
    let as_user = |args: &[&str]| -> Option<Output> {
        let mut cmd = if is_root() {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
            c
        } else {
            Command::new("env")
        };
        cmd.args(args);
        run_with_timeout(&mut cmd, COMMAND_TIMEOUT).ok()
    };
    let probe = root.join("scripts/lib/common.sh");
    match as_user(&["test", "-r", probe.to_str().unwrap()]) {
        Some(o) if o.status.success() => {}
        _ => {
            eprintln!("SKIP: refusal without root: setpriv missing or the repository is not readable by nobody");
            return;
        }
    }
    let s = |name: &str| root.join("scripts").join(name).display().to_string();
    for (name, args) in [
        ("host-tune.sh", vec![]),
        (
            "tproxy-rules.sh",
            vec!["up", "--port", "6001", "--dports", "5000"],
        ),
        ("tproxy-rules.sh", vec!["down"]),
        ("install.sh", vec!["--bin", "/bin/true"]),
        ("demo-wan.sh", vec!["--no-build"]),
    ] {
        let path = s(name);
        let mut argv = vec![path.as_str()];
        argv.extend(args.iter().copied());
        let out = as_user(&argv).expect("run the script");
        let err = text(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name} {args:?} without root: {err}"
        );
        assert!(
            err.contains(&format!("{name}: needs root to")),
            "{name}: {err}"
        );
    }
    // --check needs no root.
    let out = as_user(&[s("host-tune.sh").as_str(), "--check", "--iface", "lo"]).unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "{}",
        text(&out.stderr)
    );
}

/// A DPDK appliance config for `dpdk-setup.sh check` with the given devices and lcore list.
fn appliance_config(dir: &Path, name: &str, lan: &str, lcores: &str, no_huge: bool) -> String {
    // `lcores` is an EAL --lcores value (lcore@CPU); this machine may have only 2 CPUs.
    let path = dir.join(name);
    let huge = if no_huge { "\"--no-huge\", " } else { "" };
    let text = format!(
        "[gateway]\nname = \"gw\"\nprivate_key_file = \"gw.key\"\ndatapath = \"dpdk\"\n\
         [peer]\nname = \"p\"\npublic_key = \"x\"\nconnect = \"10.9.2.2:7700\"\n\
         [dpdk]\neal_args = [{huge}\"--lcores={lcores}\", \"--vdev=net_af_packet0,iface=lan0\", \"--vdev=net_af_packet1,iface=wan0\"]\n\
         io_lcores = [1]\ntcp_lcore = 2\ncrypto_lcores = []\nidle_sleep_us = 50\n\
         [dpdk.lan]\ndevice = \"{lan}\"\naddress = \"10.9.1.1/24\"\n\
         [dpdk.wan]\ndevice = \"net_af_packet1\"\naddress = \"10.9.2.1/24\"\n"
    );
    fs::write(&path, text).expect("write config");
    path.display().to_string()
}

#[test]
fn dpdk_setup_check_names_what_is_wrong_and_passes_a_test_box_config() {
    let (dir, _keep) = temp_dir("dpdk-check");
    // A missing PCI device and a role lcore outside the EAL's list: errors, exit 1.
    let bad = appliance_config(&dir, "bad.toml", "0000:ff:1f.7", "0@0,1@0", true);
    let out = script("dpdk-setup.sh", &["check", "--config", &bad]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{report}");
    assert!(
        report.contains("error: dpdk.lan.device 0000:ff:1f.7: no such PCI device"),
        "{report}"
    );
    assert!(
        report.contains("error: tcp lcore 2 is not in the EAL's lcore list"),
        "{report}"
    );
    // Hugepages are checked unless --no-huge (none are reserved for the tests).
    let huge = appliance_config(&dir, "huge.toml", "net_af_packet0", "0@0,1@0,2@0", false);
    let report = text(&script("dpdk-setup.sh", &["check", "--config", &huge]).stdout);
    assert!(report.contains("hugepages"), "{report}");
    // The interop tests' kind of setup (af_packet vdevs, no hugepages): no error.
    let good = appliance_config(&dir, "good.toml", "net_af_packet0", "0@0,1@0,2@0", true);
    let out = script("dpdk-setup.sh", &["check", "--config", &good]);
    let report = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report}");
    assert!(
        report.contains("ok: dpdk.lan.device net_af_packet0 is a virtual device"),
        "{report}"
    );
    assert!(report.contains("0 error(s)"), "{report}");
    // A kernel-datapath config has nothing to check.
    let kernel = dir.join("kernel.toml");
    fs::write(&kernel, "[gateway]\nname = \"k\"\n").unwrap();
    let out = script(
        "dpdk-setup.sh",
        &["check", "--config", kernel.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stdout).contains("is not \"dpdk\""));
}

#[test]
fn dpdk_setup_hugepages_is_idempotent_and_bind_refuses_a_missing_device() {
    if !is_root() {
        eprintln!("SKIP: dpdk-setup.sh hugepages/bind: needs root");
        return;
    }
    let nr = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
    let Ok(before) = fs::read_to_string(nr) else {
        eprintln!("SKIP: no 2M hugepages in this kernel");
        return;
    };
    let before: u64 = before.trim().parse().unwrap();
    // Reserve 8 more pages, twice: the second run changes nothing.
    let want = (before + 8).to_string();
    let first = script("dpdk-setup.sh", &["hugepages", "--pages", &want]);
    let second = script("dpdk-setup.sh", &["hugepages", "--pages", &want]);
    let now: u64 = fs::read_to_string(nr).unwrap().trim().parse().unwrap();
    // Give the memory back before asserting anything.
    fs::write(nr, before.to_string()).expect("restore nr_hugepages");
    if !first.status.success() && text(&first.stderr).contains("fragmented") {
        eprintln!("SKIP: the kernel could not find 8 free 2M pages");
        return;
    }
    assert!(first.status.success(), "{}", text(&first.stderr));
    assert_eq!(now, before + 8);
    assert!(second.status.success());
    assert!(
        text(&second.stderr).contains("unchanged"),
        "{}",
        text(&second.stderr)
    );
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let hugetlbfs = mounts
        .lines()
        .filter(|l| l.split(' ').nth(1) == Some("/dev/hugepages") && l.contains(" hugetlbfs "))
        .count();
    assert_eq!(
        hugetlbfs, 1,
        "hugetlbfs mounted once, not once per run:\n{mounts}"
    );
    // bind checks the device before touching any driver.
    let out = script("dpdk-setup.sh", &["bind", "0000:ff:1f.7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no PCI device 0000:ff:1f.7"),
        "{}",
        text(&out.stderr)
    );
}
