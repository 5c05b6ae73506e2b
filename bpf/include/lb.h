/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Connect-time load balancing: the decision logic behind cgroup/connect4/6.
 * It is kept free of the hook's context so tests can call it from a
 * syscall program through BPF_PROG_TEST_RUN, which sock_addr programs
 * cannot use.
 */
#ifndef KMESH_LB_H
#define KMESH_LB_H

#include "maps.h"

#define KM_ENOENT 2       /* not ours: not enrolled, not a service, not a port */
#define KM_EHOSTUNREACH 113 /* the service has no endpoint of this family */

/* A connect() as the balancer sees it. Address and port in network order;
 * IPv4 addresses IPv4-mapped, as in frontend_key. */
struct lb_request {
	__u64 netns_cookie;
	__u32 addr[4];
	__u16 port;
	__u8 family; /* enum km_family the socket speaks to the service */
	__u8 proto;
	__u32 rand; /* random number for the pick; injected so tests decide it */
	__u32 pad;
};

/* Where the connect() goes instead. */
struct lb_result {
	__u32 addr[4]; /* IPv4 backends IPv4-mapped */
	__u16 port;
	__u16 pad;
	__u32 service_id;
	__u32 backend_id;
};

static __always_inline void lb_v4_mapped(__u32 addr[4], __u32 v4)
{
	addr[0] = 0;
	addr[1] = 0;
	addr[2] = bpf_htonl(0x0000ffff);
	addr[3] = v4;
}

static __always_inline int lb_is_v4_mapped(const __u32 addr[4])
{
	return addr[0] == 0 && addr[1] == 0 && addr[2] == bpf_htonl(0x0000ffff);
}

/* Picks the slot for a new connection: the random number, or the next
 * round-robin position of the service. */
static __always_inline __u32 lb_slot(const struct service_value *svc, __u32 service_id,
				     __u32 slots, __u32 rand)
{
	if (svc->lb_mode == KM_LB_ROUND_ROBIN) {
		__u32 *pos = bpf_map_lookup_elem(&km_rr, &service_id);
		if (pos)
			return __sync_fetch_and_add(pos, 1) % slots;
	}
	return rand % slots;
}

/*
 * Looks up the endpoint slot chosen for svc. Returns NULL when the slot is
 * gone, which only happens when userspace flipped the generation between
 * our reads of the service and of the slot.
 */
static __always_inline struct endpoint_value *
__lb_endpoint(const struct service_value *svc, __u32 service_id, __u8 family, __u32 rand)
{
	__u32 slots = svc->slots[family & 1];
	struct endpoint_key key = {
		.service_id = service_id,
		.family = family,
		.gen = svc->gen,
	};

	if (slots == 0)
		return NULL;
	key.slot = lb_slot(svc, service_id, slots, rand);
	return bpf_map_lookup_elem(&km_endpoint, &key);
}

/*
 * Decides where a connect() goes. Returns 0 with res filled when the
 * destination is rewritten, -KM_ENOENT when the connect is not ours and
 * must pass untouched, -KM_EHOSTUNREACH when the address is a service with
 * no endpoint of the socket's family (the hook fails the connect at once).
 */
static __always_inline int lb_xlate(const struct lb_request *req, struct lb_result *res)
{
	struct manage_key mkey = { .netns_cookie = req->netns_cookie };
	struct frontend_key fkey = {};
	struct frontend_value *fe;
	struct service_value *svc;
	struct endpoint_value *ep;
	struct backend_value *be;
	__u32 service_id;

	if (req->proto != IPPROTO_TCP)
		return -KM_ENOENT;
	if (!bpf_map_lookup_elem(&km_manage, &mkey))
		return -KM_ENOENT;

	__builtin_memcpy(fkey.addr, req->addr, sizeof(fkey.addr));
	fkey.port = req->port;
	fkey.proto = req->proto;
	fe = bpf_map_lookup_elem(&km_frontend, &fkey);
	if (!fe)
		return -KM_ENOENT;
	service_id = fe->service_id;

	svc = bpf_map_lookup_elem(&km_service, &service_id);
	if (!svc)
		return -KM_EHOSTUNREACH;
	ep = __lb_endpoint(svc, service_id, req->family, req->rand);
	if (!ep) {
		/* Lost a race with a generation flip: the re-read service
		 * names the live generation. */
		svc = bpf_map_lookup_elem(&km_service, &service_id);
		if (!svc)
			return -KM_EHOSTUNREACH;
		ep = __lb_endpoint(svc, service_id, req->family, req->rand);
		if (!ep)
			return -KM_EHOSTUNREACH;
	}

	be = bpf_map_lookup_elem(&km_backend, &ep->backend_id);
	if (!be)
		return -KM_EHOSTUNREACH;
	if (req->family == KM_FAMILY_V4) {
		if (!(be->flags & KM_BACKEND_HAS_V4))
			return -KM_EHOSTUNREACH;
		lb_v4_mapped(res->addr, be->addr4);
	} else {
		if (!(be->flags & KM_BACKEND_HAS_V6))
			return -KM_EHOSTUNREACH;
		__builtin_memcpy(res->addr, be->addr6, sizeof(res->addr));
	}
	res->port = fe->target_port;
	res->service_id = service_id;
	res->backend_id = ep->backend_id;
	return 0;
}

#endif
