// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Runs the authorization decision (include/authz.h) on one connection under
 * BPF_PROG_TEST_RUN, which the hooks themselves cannot use. The maps come
 * from the test: internal/bpf/bpftest fills them with the real dataplane
 * code from each case of internal/authz/authztest, runs this program, and
 * compares its verdict with the Go evaluator's.
 *
 * An XDP program, not a syscall one: syscall programs are sleepable, and
 * sleepable programs may not use the LPM trie of address blocks. The
 * "packet" is a struct authz_test_ctx, written back with the verdict.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "authz.h"

/* One connection in, the verdict out. */
struct authz_test_ctx {
	__u32 src[4]; /* IPv4-mapped for IPv4; network order */
	__u32 dst[4];
	__u64 netns_cookie; /* with from_netns: the source's namespace */
	__u16 dst_port;     /* network order */
	__u8 from_netns;    /* 1: decide as connect() on the source's node does */
	__u8 pad;
	__u32 verdict;   /* out: enum km_authz_verdict */
	__u32 policy_id; /* out: the policy that decided; 0: none */
	__u32 pad2;
};

/* Keeps the struct in the BTF, for its Go twin. */
const struct authz_test_ctx *unused_authz_test_ctx __attribute__((unused));

SEC("xdp")
int authz_check(struct xdp_md *xdp)
{
	struct authz_test_ctx *ctx = (void *)(long)xdp->data;
	__u32 src[4], dst[4], policy_id = 0;
	int verdict;

	if ((void *)(ctx + 1) > (void *)(long)xdp->data_end)
		return XDP_ABORTED;
	__builtin_memcpy(src, ctx->src, sizeof(src));
	__builtin_memcpy(dst, ctx->dst, sizeof(dst));
	if (ctx->from_netns)
		verdict = authz_at_source(ctx->netns_cookie, dst, ctx->dst_port, &policy_id);
	else
		verdict = authz_at_destination(src, dst, ctx->dst_port, &policy_id);
	ctx->verdict = verdict;
	ctx->policy_id = policy_id;
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
