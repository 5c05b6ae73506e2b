// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Tests of the connect-time balancer (include/lb.h). sock_addr programs
 * cannot run under BPF_PROG_TEST_RUN, so each test is a syscall program that
 * fills the maps, calls lb_xlate() and returns 0 on success or the line of
 * the failed check. internal/bpf/bpftest runs every "test_" program on
 * fresh maps, one subtest each.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "lb.h"

#define CHECK(cond)                  \
	do {                         \
		if (!(cond))         \
			return __LINE__; \
	} while (0)

#define NETNS 42
#define SVC_ID 7
#define VIP4 bpf_htonl(0x0a60000a) /* 10.96.0.10 */
#define PORT bpf_htons(80)
#define TARGET bpf_htons(8080)

static __always_inline void enroll(__u64 cookie)
{
	struct manage_key k = { .netns_cookie = cookie };
	struct manage_value v = {};
	bpf_map_update_elem(&km_manage, &k, &v, BPF_ANY);
}

static __always_inline void frontend4(__u32 vip, __u16 port, __u32 id)
{
	struct frontend_key k = { .port = port, .proto = IPPROTO_TCP };
	struct frontend_value v = { .service_id = id, .target_port = TARGET };
	lb_v4_mapped(k.addr, vip);
	bpf_map_update_elem(&km_frontend, &k, &v, BPF_ANY);
}

static __always_inline void service(__u32 id, __u8 mode, __u8 gen, __u32 slots4, __u32 slots6)
{
	struct service_value v = { .lb_mode = mode, .gen = gen };
	v.slots[KM_FAMILY_V4] = slots4;
	v.slots[KM_FAMILY_V6] = slots6;
	bpf_map_update_elem(&km_service, &id, &v, BPF_ANY);
}

static __always_inline void slot(__u32 id, __u8 family, __u8 gen, __u32 i, __u32 backend)
{
	struct endpoint_key k = { .service_id = id, .family = family, .gen = gen, .slot = i };
	struct endpoint_value v = { .backend_id = backend };
	bpf_map_update_elem(&km_endpoint, &k, &v, BPF_ANY);
}

/* Backend n has 10.1.0.n and fd00::n. */
static __always_inline void backend(__u32 id, __u32 flags)
{
	struct backend_value v = { .flags = flags };
	v.addr4 = bpf_htonl(0x0a010000 | id);
	v.addr6[0] = bpf_htonl(0xfd000000);
	v.addr6[3] = bpf_htonl(id);
	bpf_map_update_elem(&km_backend, &id, &v, BPF_ANY);
}

/* One IPv4 service with three backends, one slot each. */
static __always_inline void three_backends(__u8 mode)
{
	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service(SVC_ID, mode, 0, 3, 0);
	for (__u32 i = 0; i < 3; i++) {
		backend(i + 1, KM_BACKEND_HAS_V4 | KM_BACKEND_HAS_V6);
		slot(SVC_ID, KM_FAMILY_V4, 0, i, i + 1);
	}
}

static __always_inline void request4(struct lb_request *req, __u32 vip, __u16 port, __u32 rand)
{
	req->netns_cookie = NETNS;
	lb_v4_mapped(req->addr, vip);
	req->port = port;
	req->family = KM_FAMILY_V4;
	req->proto = IPPROTO_TCP;
	req->rand = rand;
}

SEC("syscall")
int test_random_pick_rewrites_to_slot(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	request4(&req, VIP4, PORT, 4); /* 4 % 3 = slot 1 = backend 2 */
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.backend_id == 2);
	CHECK(res.service_id == SVC_ID);
	CHECK(res.port == TARGET);
	CHECK(lb_is_v4_mapped(res.addr));
	CHECK(res.addr[3] == bpf_htonl(0x0a010002));
	return 0;
}

SEC("syscall")
int test_round_robin_cycles(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_ROUND_ROBIN);
	request4(&req, VIP4, PORT, 0);
	for (__u32 i = 0; i < 6; i++) {
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id == (i % 3) + 1);
	}
	return 0;
}

SEC("syscall")
int test_not_enrolled_passes(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	request4(&req, VIP4, PORT, 0);
	req.netns_cookie = NETNS + 1;
	CHECK(lb_xlate(&req, &res) == -KM_ENOENT);
	return 0;
}

SEC("syscall")
int test_other_address_or_port_passes(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	request4(&req, VIP4 + bpf_htonl(1), PORT, 0);
	CHECK(lb_xlate(&req, &res) == -KM_ENOENT);
	request4(&req, VIP4, bpf_htons(81), 0);
	CHECK(lb_xlate(&req, &res) == -KM_ENOENT);
	return 0;
}

SEC("syscall")
int test_udp_passes(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	request4(&req, VIP4, PORT, 0);
	req.proto = IPPROTO_UDP;
	CHECK(lb_xlate(&req, &res) == -KM_ENOENT);
	return 0;
}

SEC("syscall")
int test_no_endpoints_is_unreachable(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service(SVC_ID, KM_LB_RANDOM, 0, 0, 0);
	request4(&req, VIP4, PORT, 0);
	CHECK(lb_xlate(&req, &res) == -KM_EHOSTUNREACH);
	return 0;
}

SEC("syscall")
int test_ipv6_picks_ipv6_slots(void *ctx)
{
	struct frontend_key k = { .port = PORT, .proto = IPPROTO_TCP };
	struct frontend_value v = { .service_id = SVC_ID, .target_port = TARGET };
	struct lb_request req = {};
	struct lb_result res = {};

	enroll(NETNS);
	k.addr[0] = bpf_htonl(0xfd000096);
	k.addr[3] = bpf_htonl(0x10);
	bpf_map_update_elem(&km_frontend, &k, &v, BPF_ANY);
	service(SVC_ID, KM_LB_RANDOM, 0, 1, 1);
	backend(1, KM_BACKEND_HAS_V4);
	backend(2, KM_BACKEND_HAS_V6);
	slot(SVC_ID, KM_FAMILY_V4, 0, 0, 1);
	slot(SVC_ID, KM_FAMILY_V6, 0, 0, 2);

	req.netns_cookie = NETNS;
	__builtin_memcpy(req.addr, k.addr, sizeof(req.addr));
	req.port = PORT;
	req.family = KM_FAMILY_V6;
	req.proto = IPPROTO_TCP;
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.backend_id == 2);
	CHECK(res.addr[0] == bpf_htonl(0xfd000000) && res.addr[3] == bpf_htonl(2));
	return 0;
}

SEC("syscall")
int test_backend_without_family_is_unreachable(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service(SVC_ID, KM_LB_RANDOM, 0, 1, 0);
	backend(1, KM_BACKEND_HAS_V6);
	slot(SVC_ID, KM_FAMILY_V4, 0, 0, 1);
	request4(&req, VIP4, PORT, 0);
	CHECK(lb_xlate(&req, &res) == -KM_EHOSTUNREACH);
	return 0;
}

SEC("syscall")
int test_live_generation_wins(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	/* Generation 1 holds only backend 3; flip to it. */
	slot(SVC_ID, KM_FAMILY_V4, 1, 0, 3);
	service(SVC_ID, KM_LB_RANDOM, 1, 1, 0);
	for (__u32 r = 0; r < 5; r++) {
		request4(&req, VIP4, PORT, r);
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id == 3);
	}
	return 0;
}

SEC("syscall")
int test_weighted_slots_shift_share(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u32 hits[3] = {};

	/* Backend 1 weight 3, backend 2 weight 1: four slots. */
	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service(SVC_ID, KM_LB_RANDOM, 0, 4, 0);
	backend(1, KM_BACKEND_HAS_V4);
	backend(2, KM_BACKEND_HAS_V4);
	slot(SVC_ID, KM_FAMILY_V4, 0, 0, 1);
	slot(SVC_ID, KM_FAMILY_V4, 0, 1, 2);
	slot(SVC_ID, KM_FAMILY_V4, 0, 2, 1);
	slot(SVC_ID, KM_FAMILY_V4, 0, 3, 1);
	for (__u32 r = 0; r < 8; r++) {
		request4(&req, VIP4, PORT, r);
		CHECK(lb_xlate(&req, &res) == 0);
		if (res.backend_id < 3)
			hits[res.backend_id]++;
	}
	CHECK(hits[1] == 6 && hits[2] == 2);
	return 0;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
