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

static __attribute__((noinline)) void enroll(__u64 cookie)
{
	struct manage_key k = { .netns_cookie = cookie };
	struct manage_value v = {};
	bpf_map_update_elem(&km_manage, &k, &v, BPF_ANY);
}

static __attribute__((noinline)) void frontend4(__u32 vip, __u16 port, __u32 id)
{
	struct frontend_key k = { .port = port, .proto = IPPROTO_TCP };
	struct frontend_value v = { .service_id = id, .target_port = TARGET };
	lb_v4_mapped(k.addr, vip);
	bpf_map_update_elem(&km_frontend, &k, &v, BPF_ANY);
}

static __attribute__((noinline)) void service(__u32 id, __u8 mode, __u8 gen, __u32 slots4, __u32 slots6)
{
	struct service_value v = { .lb_mode = mode, .gen = gen };
	v.slots[KM_FAMILY_V4] = slots4;
	v.slots[KM_FAMILY_V6] = slots6;
	bpf_map_update_elem(&km_service, &id, &v, BPF_ANY);
}

static __attribute__((noinline)) void slot(__u32 id, __u8 family, __u8 gen, __u32 i, __u32 backend)
{
	struct endpoint_key k = { .service_id = id, .family = family, .gen = gen, .slot = i };
	struct endpoint_value v = { .backend_id = backend };
	bpf_map_update_elem(&km_endpoint, &k, &v, BPF_ANY);
}

/* Backend n has 10.1.0.n and fd00::n. */
static __attribute__((noinline)) void backend(__u32 id, __u32 flags)
{
	struct backend_value v = { .flags = flags };
	v.addr4 = bpf_htonl(0x0a010000 | id);
	v.addr6[0] = bpf_htonl(0xfd000000);
	v.addr6[3] = bpf_htonl(id);
	bpf_map_update_elem(&km_backend, &id, &v, BPF_ANY);
}

/* One IPv4 service with three backends, one slot each. */
static __attribute__((noinline)) void three_backends(__u8 mode)
{
	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service(SVC_ID, mode, 0, 3, 0);
	for (__u32 i = 0; i < 3; i++) {
		backend(i + 1, KM_BACKEND_HAS_V4 | KM_BACKEND_HAS_V6);
		slot(SVC_ID, KM_FAMILY_V4, 0, i, i + 1);
	}
}

static __attribute__((noinline)) void request4(struct lb_request *req, __u32 vip, __u16 port, __u32 rand)
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

/* A workload's own address with a waypoint: one frontend for every port,
 * target port 0, so each connect keeps its port and is marked any_port;
 * a service port of the same address still wins. */
SEC("syscall")
int test_any_port_frontend_keeps_the_port(void *ctx)
{
	struct frontend_key k = { .port = KM_ANY_PORT, .proto = IPPROTO_TCP };
	struct frontend_value v = { .service_id = SVC_ID + 1, .target_port = 0 };
	struct lb_request req = {};
	struct lb_result res = {};

	three_backends(KM_LB_RANDOM);
	lb_v4_mapped(k.addr, VIP4);
	bpf_map_update_elem(&km_frontend, &k, &v, BPF_ANY);
	service(SVC_ID + 1, KM_LB_RANDOM, 0, 1, 0);
	slot(SVC_ID + 1, KM_FAMILY_V4, 0, 0, 3);
	request4(&req, VIP4, bpf_htons(9090), 0);
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.any_port == 1);
	CHECK(res.service_id == SVC_ID + 1);
	CHECK(res.backend_id == 3);
	CHECK(res.port == bpf_htons(9090));
	__builtin_memset(&res, 0, sizeof(res));
	request4(&req, VIP4, PORT, 0);
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.any_port == 0);
	CHECK(res.service_id == SVC_ID);
	CHECK(res.port == TARGET);
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

/* Locality, affinity, Maglev and outlier detection (lb_choose). */

#define SEC_NS 1000000000ULL
#define CLASS 3

static __attribute__((noinline)) void service_flags(__u32 id, __u8 mode, __u32 slots4, __u16 flags)
{
	struct service_value v = { .lb_mode = mode, .flags = flags };
	v.slots[KM_FAMILY_V4] = slots4;
	bpf_map_update_elem(&km_service, &id, &v, BPF_ANY);
}

static __attribute__((noinline)) void client(__u64 cookie, __u16 class, __u32 addr4)
{
	struct lb_client c = { .client_class = class };
	if (addr4)
		lb_v4_mapped(c.addr, addr4);
	bpf_map_update_elem(&km_lb_client, &cookie, &c, BPF_ANY);
}

static __attribute__((noinline)) void prio_slot(__u16 class, __u32 prio, __u32 i, __u32 backend)
{
	struct endpoint_key k = { .service_id = SVC_ID, .family = KM_FAMILY_V4, .gen = 0,
				  .group = 1 + class * KM_LB_PRIORITIES + prio, .slot = i };
	struct endpoint_value v = { .backend_id = backend };
	bpf_map_update_elem(&km_endpoint, &k, &v, BPF_ANY);
}

static __attribute__((noinline)) void prio_counts(__u16 class, __u32 p0, __u32 p1, __u32 p2)
{
	struct lb_prio_key k = { .service_id = SVC_ID, .family = KM_FAMILY_V4, .gen = 0, .client_class = class };
	struct lb_prio v = {};
	v.slots[0] = p0;
	v.slots[1] = p1;
	v.slots[2] = p2;
	bpf_map_update_elem(&km_lb_prio, &k, &v, BPF_ANY);
}

static __attribute__((noinline)) void member(__u32 backend)
{
	struct lb_backend_key k = { .service_id = SVC_ID, .backend_id = backend };
	struct lb_backend v = {};
	bpf_map_update_elem(&km_lb_backend, &k, &v, BPF_ANY);
}

static __attribute__((noinline)) void conf(__u32 affinity_s, __u16 failures, __u32 base_ms, __u8 pct, __u32 backends)
{
	__u32 id = SVC_ID;
	struct lb_conf c = { .affinity_timeout_s = affinity_s, .consecutive_failures = failures,
			     .base_ejection_ms = base_ms, .max_ejection_pct = pct, .backends = backends };
	struct lb_eject e = {};
	bpf_map_update_elem(&km_lb_conf, &id, &c, BPF_ANY);
	bpf_map_update_elem(&km_lb_eject, &id, &e, BPF_ANY);
}

/* Client class 3 sees backend 1 at priority 0 (its zone), backends 2 and 3
 * at priority 2 (its region); class 0 (unknown) sees all at priority 0. */
static __attribute__((noinline)) void locality_service(__u16 flags)
{
	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service_flags(SVC_ID, KM_LB_RANDOM, 0, KM_LB_LOCALITY | flags);
	for (__u32 i = 1; i <= 3; i++) {
		backend(i, KM_BACKEND_HAS_V4);
		member(i);
	}
	client(NETNS, CLASS, 0);
	prio_slot(CLASS, 0, 0, 1);
	prio_slot(CLASS, 2, 0, 2);
	prio_slot(CLASS, 2, 1, 3);
	prio_counts(CLASS, 1, 0, 2);
}

SEC("syscall")
int test_locality_picks_closest_priority(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	locality_service(0);
	for (__u32 r = 0; r < 8; r++) {
		request4(&req, VIP4, PORT, r);
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id == 1);
		CHECK(res.how == KM_LB_HOW_PRIORITY && res.prio == 0);
	}
	return 0;
}

SEC("syscall")
int test_locality_fails_over_when_priority_empties(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u32 hits[4] = {};

	locality_service(0);
	prio_counts(CLASS, 0, 0, 2); /* the zone's endpoint left */
	for (__u32 r = 0; r < 8; r++) {
		request4(&req, VIP4, PORT, r);
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.prio == 2);
		hits[res.backend_id & 3]++;
	}
	CHECK(hits[1] == 0 && hits[2] == 4 && hits[3] == 4);
	return 0;
}

SEC("syscall")
int test_locality_strict_refuses_when_nothing_matches(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	locality_service(KM_LB_STRICT);
	prio_counts(CLASS, 0, 0, 0);
	request4(&req, VIP4, PORT, 0);
	CHECK(lb_xlate(&req, &res) == -KM_ECONNREFUSED);
	/* A client of a class with no table is refused too. */
	prio_counts(CLASS, 1, 0, 0);
	client(NETNS, CLASS + 1, 0);
	CHECK(lb_xlate(&req, &res) == -KM_ECONNREFUSED);
	return 0;
}

SEC("syscall")
int test_locality_ejected_priority_falls_over(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	locality_service(KM_LB_OUTLIER);
	conf(0, 1, 1000, 100, 3);
	request4(&req, VIP4, PORT, 0);
	req.now = 10 * SEC_NS;
	CHECK(lb_connect_failed(SVC_ID, 1, req.now) == 1);
	for (__u32 r = 0; r < 4; r++) {
		req.rand = r;
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id != 1 && res.prio == 2);
	}
	/* Back after the ejection time. */
	req.now += 1000 * 1000000ULL + 1;
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.backend_id == 1 && res.prio == 0);
	return 0;
}

/* Three backends, one slot each, with outlier detection: eject after 3
 * failures for 1 s (x n), at most pct percent. */
static __attribute__((noinline)) void outlier_service(__u8 pct)
{
	three_backends(KM_LB_RANDOM);
	service_flags(SVC_ID, KM_LB_RANDOM, 3, KM_LB_OUTLIER);
	for (__u32 i = 1; i <= 3; i++)
		member(i);
	conf(0, 3, 1000, pct, 3);
}

SEC("syscall")
int test_ejection_after_consecutive_failures(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u64 now = 100 * SEC_NS;

	outlier_service(100);
	CHECK(lb_connect_failed(SVC_ID, 2, now) == 0);
	CHECK(lb_connect_failed(SVC_ID, 2, now) == 0);
	lb_connect_succeeded(SVC_ID, 2, now); /* not in a row: starts over */
	CHECK(lb_connect_failed(SVC_ID, 2, now) == 0);
	CHECK(lb_connect_failed(SVC_ID, 2, now) == 0);
	CHECK(lb_connect_failed(SVC_ID, 2, now) == 1);
	request4(&req, VIP4, PORT, 0);
	req.now = now;
	for (__u32 r = 0; r < 9; r++) {
		req.rand = r;
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id != 2);
	}
	/* Returns after 1 s; the second ejection in a row lasts 2 s. */
	req.now = now + SEC_NS + 1;
	req.rand = 1;
	CHECK(lb_xlate(&req, &res) == 0 && res.backend_id == 2);
	now = req.now;
	for (int i = 0; i < 3; i++)
		lb_connect_failed(SVC_ID, 2, now);
	req.now = now + SEC_NS + 1;
	CHECK(lb_xlate(&req, &res) == 0 && res.backend_id != 2);
	req.now = now + 2 * SEC_NS + 1;
	CHECK(lb_xlate(&req, &res) == 0 && res.backend_id == 2);
	{
		__u32 id = SVC_ID;
		struct lb_eject *e = bpf_map_lookup_elem(&km_lb_eject, &id);
		CHECK(e && e->total == 2);
	}
	return 0;
}

SEC("syscall")
int test_ejection_keeps_floor(void *ctx)
{
	__u64 now = 100 * SEC_NS;

	/* 10% of 3 backends: still one may go, not two. */
	outlier_service(10);
	for (int i = 0; i < 3; i++)
		lb_connect_failed(SVC_ID, 1, now);
	CHECK(lb_ejected(SVC_ID, 1, now));
	for (int i = 0; i < 5; i++)
		CHECK(lb_connect_failed(SVC_ID, 3, now) == 0);
	CHECK(!lb_ejected(SVC_ID, 3, now));
	/* Once the first is back, the next may go. */
	now += SEC_NS + 1;
	CHECK(lb_connect_failed(SVC_ID, 3, now) == 1);
	return 0;
}

SEC("syscall")
int test_all_ejected_still_connects(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u64 now = 100 * SEC_NS;

	outlier_service(100);
	for (__u32 b = 1; b <= 3; b++)
		for (int i = 0; i < 3; i++)
			lb_connect_failed(SVC_ID, b, now);
	request4(&req, VIP4, PORT, 1);
	req.now = now;
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.how == KM_LB_HOW_PANIC);
	return 0;
}

SEC("syscall")
int test_affinity_keeps_client_until_timeout(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u64 now = 100 * SEC_NS;
	__u32 first;

	three_backends(KM_LB_RANDOM);
	service_flags(SVC_ID, KM_LB_RANDOM, 3, KM_LB_AFFINITY);
	for (__u32 i = 1; i <= 3; i++)
		member(i);
	conf(10, 0, 0, 0, 3);
	client(NETNS, 0, bpf_htonl(0x0a020001));
	request4(&req, VIP4, PORT, 0);
	req.now = now;
	CHECK(lb_xlate(&req, &res) == 0);
	first = res.backend_id;
	/* Each new connection within the timeout refreshes it. */
	for (__u32 r = 1; r < 20; r++) {
		req.rand = r;
		req.now = now + r * SEC_NS;
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id == first && res.how == KM_LB_HOW_AFFINITY);
	}
	/* 10 s after the last one, the client is balanced afresh. */
	req.now += 10 * SEC_NS;
	req.rand = first; /* slot first % 3 is backend first % 3 + 1 */
	CHECK(lb_xlate(&req, &res) == 0);
	CHECK(res.how == KM_LB_HOW_SLOT && res.backend_id == first % 3 + 1);
	/* Another bound source address is another client. */
	req.src[2] = bpf_htonl(0xffff);
	req.src[3] = bpf_htonl(0x0a020002);
	req.rand = first;
	CHECK(lb_xlate(&req, &res) == 0 && res.how == KM_LB_HOW_SLOT);
	return 0;
}

SEC("syscall")
int test_affinity_drops_removed_backend(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	struct lb_backend_key bk = { .service_id = SVC_ID };

	three_backends(KM_LB_RANDOM);
	service_flags(SVC_ID, KM_LB_RANDOM, 3, KM_LB_AFFINITY);
	for (__u32 i = 1; i <= 3; i++)
		member(i);
	conf(10, 0, 0, 0, 3);
	request4(&req, VIP4, PORT, 0);
	req.now = SEC_NS;
	CHECK(lb_xlate(&req, &res) == 0 && res.backend_id == 1);
	bk.backend_id = 1;
	bpf_map_delete_elem(&km_lb_backend, &bk);
	/* Backend 1 left the service (its slot is now backend 2's). */
	slot(SVC_ID, KM_FAMILY_V4, 0, 0, 2);
	CHECK(lb_xlate(&req, &res) == 0 && res.backend_id == 2 && res.how == KM_LB_HOW_SLOT);
	return 0;
}

/* Maglev: internal/bpf/bpftest puts a table at km_maglev[SVC_ID * 2]
 * before the run (tables need an inner map, which only userspace makes). */
SEC("syscall")
int test_maglev_picks_table_entry_of_client_hash(void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	__u32 outer = SVC_ID * 2;
	void *table = bpf_map_lookup_elem(&km_maglev, &outer);

	CHECK(table);
	enroll(NETNS);
	frontend4(VIP4, PORT, SVC_ID);
	service_flags(SVC_ID, KM_LB_MAGLEV, 0, KM_LB_OUTLIER);
	for (__u32 i = 1; i <= 3; i++) {
		backend(i, KM_BACKEND_HAS_V4);
		member(i);
	}
	conf(0, 1, 1000, 100, 3);
	request4(&req, VIP4, PORT, 0);
	req.now = SEC_NS;
	req.src[2] = bpf_htonl(0xffff);
	for (__u32 c = 1; c <= 50; c++) {
		__u32 idx, *want;
		req.src[3] = bpf_htonl(0x0a030000 + c);
		idx = lb_hash(req.src) % km_maglev_size;
		want = bpf_map_lookup_elem(table, &idx);
		CHECK(want);
		CHECK(lb_xlate(&req, &res) == 0);
		CHECK(res.backend_id == *want && res.how == KM_LB_HOW_MAGLEV);
		/* The same client always gets the same backend. */
		req.rand = c;
		CHECK(lb_xlate(&req, &res) == 0 && res.backend_id == *want);
	}
	/* An ejected backend's clients go to the next entry that is not. */
	CHECK(lb_connect_failed(SVC_ID, 2, req.now) == 1);
	for (__u32 c = 1; c <= 50; c++) {
		req.src[3] = bpf_htonl(0x0a030000 + c);
		CHECK(lb_xlate(&req, &res) == 0 && res.backend_id != 2);
	}
	return 0;
}

/* lb_hash of three keys, for the Go twin (maglev.Hash) to compare. */
__u32 hash_out[3];

SEC("syscall")
int test_hash_of_keys(void *ctx)
{
	__u32 k[4] = { 0, 0, bpf_htonl(0xffff), bpf_htonl(0x0a000001) };

	hash_out[0] = lb_hash(k);
	k[3] = bpf_htonl(0x0a000002);
	hash_out[1] = lb_hash(k);
	k[0] = bpf_htonl(0xfd000000);
	hash_out[2] = lb_hash(k);
	return 0;
}

/*
 * Connect cost per mode (internal/bpf/bpftest BenchmarkConnect): the
 * decision of bench_rounds connects, each on a fresh random number, for
 * the service set up as bench_mode says. Syscall programs cannot repeat
 * under BPF_PROG_TEST_RUN, so the loop is here (bpf_loop).
 */
enum bench_mode {
	BENCH_PLAIN = 0,    /* random, no flags: the path every service took before */
	BENCH_LOCALITY = 1, /* FAILOVER, closest priority of the client's class */
	BENCH_AFFINITY = 2, /* ClientIP affinity: every connect after the first hits */
	BENCH_OUTLIER = 3,  /* outlier detection on, nothing ejected */
	BENCH_MAGLEV = 4,   /* Maglev table (put from Go) */
};
volatile const __u32 bench_mode = BENCH_PLAIN;
volatile const __u32 bench_rounds = 10000;
__u32 bench_failed;

static long bench_one(__u32 i, void *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};

	request4(&req, VIP4, PORT, bpf_get_prandom_u32());
	req.now = bpf_ktime_get_ns();
	if (lb_xlate(&req, &res) != 0)
		bench_failed++;
	return 0;
}

SEC("syscall")
int bench_connect(void *ctx)
{
	switch (bench_mode) {
	case BENCH_LOCALITY:
		locality_service(0);
		break;
	case BENCH_AFFINITY:
		three_backends(KM_LB_RANDOM);
		service_flags(SVC_ID, KM_LB_RANDOM, 3, KM_LB_AFFINITY);
		for (__u32 i = 1; i <= 3; i++)
			member(i);
		conf(3600, 0, 0, 0, 3);
		break;
	case BENCH_OUTLIER:
		outlier_service(10);
		break;
	case BENCH_MAGLEV:
		enroll(NETNS);
		frontend4(VIP4, PORT, SVC_ID);
		service_flags(SVC_ID, KM_LB_MAGLEV, 0, 0);
		for (__u32 i = 1; i <= 3; i++)
			backend(i, KM_BACKEND_HAS_V4);
		break;
	default:
		three_backends(KM_LB_RANDOM);
	}
	bpf_loop(bench_rounds, bench_one, NULL, 0);
	return bench_failed;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
