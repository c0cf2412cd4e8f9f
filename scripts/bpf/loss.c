// SPDX-License-Identifier: MIT OR Apache-2.0
//
// linkemu random-loss XDP program.
//
// Attached (native XDP) to the ingress veths of the `wan` router namespace, so it sees
// wire-sized packets *before* GRO merges them: dropping here loses one MTU-sized packet, like a
// real lossy link, instead of a 64 KiB GRO/TSO aggregate.
//
// Configuration is per ingress interface (key = ifindex) in `linkemu_cfg`:
//   threshold  drop when bpf_get_prandom_u32() < threshold  (threshold = loss * 2^32)
// Counters per interface and CPU in `linkemu_cnt`. Only IPv4/IPv6 frames are eligible for
// dropping; ARP and everything else always pass.
//
// Built by scripts/linkemu/build.rs with
//   clang -O2 -g -target bpf -I/usr/include/$(multiarch) -c loss.c -o loss.o

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

struct loss_cfg {
	__u32 threshold;
	__u32 pad;
};

struct loss_cnt {
	__u64 packets;
	__u64 bytes;
	__u64 dropped;
	__u64 dropped_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct loss_cfg);
} linkemu_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, 64);
	__type(key, __u32);
	__type(value, struct loss_cnt);
} linkemu_cnt SEC(".maps");

SEC("xdp")
int linkemu_loss(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 key = ctx->ingress_ifindex;
	__u64 len = (__u64)(data_end - data);
	struct loss_cfg *cfg;
	struct loss_cnt *cnt;
	int drop = 0;

	if ((void *)(eth + 1) > data_end)
		return XDP_PASS;
	if (eth->h_proto != bpf_htons(ETH_P_IP) && eth->h_proto != bpf_htons(ETH_P_IPV6))
		return XDP_PASS;

	cfg = bpf_map_lookup_elem(&linkemu_cfg, &key);
	if (cfg && cfg->threshold && bpf_get_prandom_u32() < cfg->threshold)
		drop = 1;

	cnt = bpf_map_lookup_elem(&linkemu_cnt, &key);
	if (cnt) {
		cnt->packets++;
		cnt->bytes += len;
		if (drop) {
			cnt->dropped++;
			cnt->dropped_bytes += len;
		}
	}
	return drop ? XDP_DROP : XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
