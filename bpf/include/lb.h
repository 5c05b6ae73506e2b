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
#define KM_EAGAIN 11      /* lost a race with a generation flip: read the service again */
#define KM_ECONNREFUSED 111 /* STRICT locality: no endpoint matches the client */
#define KM_EHOSTUNREACH 113 /* the service has no endpoint of this family */

/* Entries of a Maglev table (a prime); set at load time with the inner
 * map's size. */
volatile const __u32 km_maglev_size = 16381;

/* Ejections last base * n for the n-th ejection in a row, at most this
 * long (Envoy's default max_ejection_time), unless base is longer. */
#define KM_LB_MAX_EJECTION_NS (300ULL * 1000000000ULL)

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
	__u32 src[4]; /* the socket's bound source address, if any (as addr); else zero */
	__u64 now;    /* bpf_ktime_get_ns(); injected so tests decide it */
};

/* How the backend was chosen (lb_result.how). */
enum km_lb_how {
	KM_LB_HOW_SLOT = 0,     /* the slot table of the service (random, round robin) */
	KM_LB_HOW_PRIORITY = 1, /* a locality priority's slot table (lb_result.prio) */
	KM_LB_HOW_AFFINITY = 2, /* the client's affinity entry */
	KM_LB_HOW_MAGLEV = 3,   /* the Maglev table */
	KM_LB_HOW_PANIC = 4,    /* every candidate ejected: picked regardless */
};

/* Where the connect() goes instead. */
struct lb_result {
	__u32 addr[4]; /* IPv4 backends IPv4-mapped */
	__u16 port;
	__u16 any_port; /* a workload's own address on every port (KM_ANY_PORT): tunnel or refuse */
	__u32 service_id;
	__u32 backend_id;
	__u8 prio; /* with KM_LB_HOW_PRIORITY */
	__u8 how;  /* enum km_lb_how */
	__u16 svc_flags; /* the service's enum km_lb_flag */
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

/* Whether the backend is ejected from the service now. */
static __always_inline int lb_ejected(__u32 service_id, __u32 backend_id, __u64 now)
{
	struct lb_backend_key k = { .service_id = service_id, .backend_id = backend_id };
	struct lb_backend *b = bpf_map_lookup_elem(&km_lb_backend, &k);

	return b && b->ejected_until_ns > now;
}

/* One slot table to try (lb_probe_slots). */
struct lb_probe {
	__u64 now;
	__u32 service_id;
	__u32 n;     /* slots in the table */
	__u32 start; /* the slot picked */
	__u16 group;
	__u8 family;
	__u8 gen;
	__u32 outlier; /* skip ejected backends */
	__u32 pad;
};

/*
 * Tries the slots of one table from start on, skipping ejected backends
 * (with outlier set), at most KM_LB_PROBES of them. Returns the backend id,
 * 0 when every slot tried is ejected, -1 when a slot is missing (the
 * generation flipped under us). A global function: the verifier checks it
 * once, not on every path of the priorities loop.
 */
__attribute__((noinline)) int lb_probe_slots(const struct lb_probe *p)
{
	struct endpoint_key key = {};
	struct endpoint_value *ep;
	__u32 n;

	if (!p)
		return -1;
	n = p->n;
	key.service_id = p->service_id;
	key.family = p->family;
	key.gen = p->gen;
	key.group = p->group;
	for (__u32 i = 0; i < KM_LB_PROBES; i++) {
		if (i >= n)
			break;
		key.slot = (p->start + i) % n;
		ep = bpf_map_lookup_elem(&km_endpoint, &key);
		if (!ep)
			return -1;
		if (!p->outlier || !lb_ejected(p->service_id, ep->backend_id, p->now))
			return ep->backend_id;
	}
	return 0;
}

/* Murmur3's 32-bit hash of a client key (internal/maglev has the Go twin):
 * spreads the keys over the Maglev table. */
static __always_inline __u32 lb_rotl(__u32 x, __u32 r)
{
	return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 lb_hash(const __u32 k[4])
{
	__u32 h = 0x4b6d6573; /* "Kmes" */

	for (int i = 0; i < 4; i++) {
		__u32 x = k[i] * 0xcc9e2d51;
		x = lb_rotl(x, 15) * 0x1b873593;
		h ^= x;
		h = lb_rotl(h, 13) * 5 + 0xe6546b64;
	}
	h ^= 16;
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* The Maglev table's backend for the client key, the next entries when it
 * is ejected. Returns 0 when the table is missing or empty. */
static __always_inline __u32 lb_maglev(__u32 service_id, __u8 family, const __u32 key[4], __u64 now,
				       __u32 outlier, __u8 *how)
{
	__u32 outer = service_id * 2 + (family & 1), first = 0, idx;
	void *table = bpf_map_lookup_elem(&km_maglev, &outer);
	__u32 size = km_maglev_size;

	if (!table || size == 0)
		return 0;
	idx = lb_hash(key) % size;
	*how = KM_LB_HOW_MAGLEV;
	for (__u32 i = 0; i < KM_LB_PROBES; i++) {
		__u32 slot = (idx + i) % size;
		__u32 *be = bpf_map_lookup_elem(table, &slot);
		if (!be || *be == 0)
			return first;
		if (!first)
			first = *be;
		if (!outlier || !lb_ejected(service_id, *be, now))
			return *be;
	}
	*how = KM_LB_HOW_PANIC;
	return first;
}

/*
 * The closest non-empty priority of the client's class, skipping ejected
 * backends; a priority whose backends are all ejected is empty for this
 * connect, so the pick falls over to the next. Returns the backend id, 0
 * when no priority has a slot (the caller refuses), or -1 on a race.
 */
static __always_inline int lb_locality(const struct service_value *svc, __u32 service_id, __u8 family,
				       __u16 client_class, __u32 rand, __u64 now, __u32 outlier,
				       struct lb_result *res)
{
	struct lb_prio_key pk = {
		.service_id = service_id,
		.family = family,
		.gen = svc->gen,
		.client_class = client_class,
	};
	struct lb_prio *pr = bpf_map_lookup_elem(&km_lb_prio, &pk);
	struct lb_probe pb = { .now = now, .service_id = service_id, .family = family, .gen = svc->gen,
			       .outlier = outlier };
	__u32 n, first_n = 0, first_group = 0;
	int r;

	if (!pr)
		return 0;
	for (__u32 p = 0; p < KM_LB_PRIORITIES; p++) {
		n = pr->slots[p];
		if (n == 0)
			continue;
		pb.group = 1 + (__u32)client_class * KM_LB_PRIORITIES + p;
		pb.n = n;
		pb.start = lb_slot(svc, service_id, n, rand);
		r = lb_probe_slots(&pb);
		if (r != 0) {
			res->prio = p;
			res->how = KM_LB_HOW_PRIORITY;
			return r;
		}
		if (!first_n) {
			first_n = n;
			first_group = pb.group;
			res->prio = p;
		}
	}
	if (!first_n)
		return 0;
	res->how = KM_LB_HOW_PANIC;
	pb.group = first_group;
	pb.n = first_n;
	pb.start = rand % first_n;
	pb.outlier = 0;
	return lb_probe_slots(&pb);
}

/* The client's key for affinity and Maglev: the bound source address,
 * else its workload's address, else its network namespace. */
static __always_inline void lb_client_key(const struct lb_request *req, const struct lb_client *cl, __u32 key[4])
{
	if (req->src[0] | req->src[1] | req->src[2] | req->src[3]) {
		__builtin_memcpy(key, req->src, 16);
	} else if (cl && (cl->addr[0] | cl->addr[1] | cl->addr[2] | cl->addr[3])) {
		__builtin_memcpy(key, cl->addr, 16);
	} else {
		key[0] = 0;
		key[1] = 0;
		key[2] = (__u32)(req->netns_cookie >> 32);
		key[3] = (__u32)req->netns_cookie;
	}
}

/*
 * The backend for a service with flags or Maglev. Returns the backend id,
 * or a negative error: -KM_EAGAIN on a race, -KM_ECONNREFUSED for STRICT
 * locality with no endpoint, -KM_EHOSTUNREACH with none at all.
 */
static __always_inline int __lb_choose(const struct lb_request *req, const struct service_value *svc,
				       __u32 service_id, struct lb_result *res)
{
	__u32 outlier = svc->flags & KM_LB_OUTLIER, key[4];
	__u8 family = req->family & 1;
	struct lb_affinity_key ak = {};
	struct lb_affinity *aff = NULL, nv = {};
	struct lb_conf *conf = NULL;
	struct lb_client *cl;
	int r = 0;

	cl = bpf_map_lookup_elem(&km_lb_client, &req->netns_cookie);
	lb_client_key(req, cl, key);

	if (svc->flags & KM_LB_AFFINITY) {
		conf = bpf_map_lookup_elem(&km_lb_conf, &service_id);
		ak.service_id = service_id;
		ak.family = family;
		__builtin_memcpy(ak.client, key, sizeof(ak.client));
		aff = bpf_map_lookup_elem(&km_lb_affinity, &ak);
		if (aff && conf && req->now - aff->last_ns < (__u64)conf->affinity_timeout_s * 1000000000ULL) {
			struct lb_backend_key bk = { .service_id = service_id, .backend_id = aff->backend_id };
			struct lb_backend *b = bpf_map_lookup_elem(&km_lb_backend, &bk);
			/* Still a backend of the service, and not ejected. */
			if (b && !(outlier && b->ejected_until_ns > req->now)) {
				aff->last_ns = req->now;
				res->how = KM_LB_HOW_AFFINITY;
				return aff->backend_id;
			}
		}
	}

	if (svc->lb_mode == KM_LB_MAGLEV) {
		r = lb_maglev(service_id, family, key, req->now, outlier, &res->how);
		if (r == 0)
			return -KM_EHOSTUNREACH;
	} else if (svc->flags & KM_LB_LOCALITY) {
		r = lb_locality(svc, service_id, family, cl ? cl->client_class : 0, req->rand, req->now, outlier, res);
		if (r < 0)
			return -KM_EAGAIN;
		if (r == 0)
			return (svc->flags & KM_LB_STRICT) ? -KM_ECONNREFUSED : -KM_EHOSTUNREACH;
	} else {
		struct lb_probe pb = { .now = req->now, .service_id = service_id, .family = family,
				       .gen = svc->gen, .outlier = outlier };
		__u32 n = svc->slots[family];
		if (n == 0)
			return -KM_EHOSTUNREACH;
		res->how = KM_LB_HOW_SLOT;
		pb.n = n;
		pb.start = lb_slot(svc, service_id, n, req->rand);
		r = lb_probe_slots(&pb);
		if (r == 0) {
			res->how = KM_LB_HOW_PANIC;
			pb.start = req->rand % n;
			pb.outlier = 0;
			r = lb_probe_slots(&pb);
		}
		if (r < 0)
			return -KM_EAGAIN;
		if (r == 0)
			return -KM_EHOSTUNREACH;
	}

	if (svc->flags & KM_LB_AFFINITY) {
		nv.last_ns = req->now;
		nv.backend_id = r;
		bpf_map_update_elem(&km_lb_affinity, &ak, &nv, BPF_ANY);
	}
	return r;
}

/* __lb_choose on the live generation of the service, once more if it
 * flipped meanwhile. A global function, with its own stack frame: the
 * connect programs' stack stays within bounds next to authorization. */
__attribute__((noinline)) int lb_choose(const struct lb_request *req, __u32 service_id, struct lb_result *res)
{
	struct service_value *svc;
	int r = -KM_EAGAIN;

	if (!req || !res)
		return -KM_EHOSTUNREACH;
	for (int i = 0; i < 2 && r == -KM_EAGAIN; i++) {
		svc = bpf_map_lookup_elem(&km_service, &service_id);
		if (!svc)
			return -KM_EHOSTUNREACH;
		r = __lb_choose(req, svc, service_id, res);
	}
	return r == -KM_EAGAIN ? -KM_EHOSTUNREACH : r;
}

/* Outlier detection, from sockops: a connect to the backend succeeded. The
 * ejection multiplier goes back to 0 once the backend has stayed in for as
 * long as its last ejection lasted. */
__attribute__((noinline)) int lb_connect_succeeded(__u32 service_id, __u32 backend_id, __u64 now)
{
	struct lb_backend_key k = { .service_id = service_id, .backend_id = backend_id };
	struct lb_backend *b = bpf_map_lookup_elem(&km_lb_backend, &k);
	struct lb_conf *conf;

	if (!b)
		return 0;
	b->failures = 0;
	if (b->ejections == 0 || b->ejected_until_ns > now)
		return 0;
	conf = bpf_map_lookup_elem(&km_lb_conf, &service_id);
	if (conf && now - b->ejected_until_ns > (__u64)conf->base_ejection_ms * 1000000ULL * b->ejections)
		b->ejections = 0;
	return 0;
}

/* Counts a service's current ejections and finds a free entry, one
 * bpf_loop step per entry: a plain loop makes the verifier walk every
 * (count, free) pair. */
struct lb_eject_scan {
	__u64 now;
	__u32 service_id;
	__u32 count;
	__u32 free;
	__u32 pad;
};

static long lb_eject_scan(__u32 i, void *ctx)
{
	struct lb_eject_scan *scan = ctx;
	struct lb_eject *ej = bpf_map_lookup_elem(&km_lb_eject, &scan->service_id);

	if (!ej)
		return 1;
	if (ej->until[i & (KM_LB_EJECT_SLOTS - 1)] > scan->now)
		scan->count++;
	else if (scan->free == KM_LB_EJECT_SLOTS)
		scan->free = i;
	return 0;
}

/*
 * A connect to the backend failed (reset, or closed before established:
 * a timeout). After consecutive_failures in a row the backend is ejected
 * for base_ejection * n (its n-th ejection in a row), unless that would
 * take more than max_ejection_pct of the service's backends out at once
 * (at least one may always go, as in Envoy). Returns 1 when it ejected.
 * Concurrent failures on several CPUs may eject one backend more than the
 * floor allows; the race is benign and rare. A global function, checked
 * once by the verifier.
 */
__attribute__((noinline)) int lb_connect_failed(__u32 service_id, __u32 backend_id, __u64 now)
{
	struct lb_backend_key k = { .service_id = service_id, .backend_id = backend_id };
	struct lb_backend *b = bpf_map_lookup_elem(&km_lb_backend, &k);
	struct lb_eject_scan scan = {};
	__u32 count, free, max, mult;
	struct lb_conf *conf;
	struct lb_eject *ej;
	__u64 dur;

	if (!b)
		return 0;
	conf = bpf_map_lookup_elem(&km_lb_conf, &service_id);
	if (!conf || conf->consecutive_failures == 0)
		return 0;
	if (b->ejected_until_ns > now)
		return 0; /* chosen before the ejection: already out */
	if (__sync_fetch_and_add(&b->failures, 1) + 1 < conf->consecutive_failures)
		return 0;
	ej = bpf_map_lookup_elem(&km_lb_eject, &service_id);
	if (!ej)
		return 0;
	scan.service_id = service_id;
	scan.now = now;
	scan.free = KM_LB_EJECT_SLOTS;
	bpf_loop(KM_LB_EJECT_SLOTS, lb_eject_scan, &scan, 0);
	count = scan.count;
	free = scan.free;
	max = conf->backends * conf->max_ejection_pct / 100;
	if (max < 1)
		max = 1;
	if (count >= max || free >= KM_LB_EJECT_SLOTS)
		return 0; /* the floor: it stays in, and its failures keep counting */
	mult = b->ejections + 1;
	dur = (__u64)conf->base_ejection_ms * 1000000ULL * mult;
	if (dur > KM_LB_MAX_EJECTION_NS && (__u64)conf->base_ejection_ms * 1000000ULL < KM_LB_MAX_EJECTION_NS)
		dur = KM_LB_MAX_EJECTION_NS;
	b->ejected_until_ns = now + dur;
	b->ejections = mult > 0xffff ? 0xffff : mult;
	b->failures = 0;
	ej->until[free & (KM_LB_EJECT_SLOTS - 1)] = b->ejected_until_ns;
	__sync_fetch_and_add(&ej->total, 1);
	return 1;
}

/*
 * Decides where a connect() goes. Returns 0 with res filled when the
 * destination is rewritten, -KM_ENOENT when the connect is not ours and
 * must pass untouched, -KM_EHOSTUNREACH when the address is a service with
 * no endpoint of the socket's family, -KM_ECONNREFUSED when STRICT
 * locality leaves none (the hook fails the connect at once in both cases).
 */
static __always_inline int lb_xlate(const struct lb_request *req, struct lb_result *res)
{
	struct manage_key mkey = { .netns_cookie = req->netns_cookie };
	struct frontend_key fkey = {};
	struct frontend_value *fe;
	struct service_value *svc;
	struct endpoint_value *ep;
	struct backend_value *be;
	__u32 service_id, backend_id;

	if (req->proto != IPPROTO_TCP)
		return -KM_ENOENT;
	if (!bpf_map_lookup_elem(&km_manage, &mkey))
		return -KM_ENOENT;

	__builtin_memcpy(fkey.addr, req->addr, sizeof(fkey.addr));
	fkey.port = req->port;
	fkey.proto = req->proto;
	fe = bpf_map_lookup_elem(&km_frontend, &fkey);
	if (!fe) {
		/* A workload's own address that goes through its waypoint has
		 * one frontend for every port (model.Service.AnyPort). */
		fkey.port = KM_ANY_PORT;
		fe = bpf_map_lookup_elem(&km_frontend, &fkey);
		if (!fe)
			return -KM_ENOENT;
		res->any_port = 1;
	}
	service_id = fe->service_id;

	svc = bpf_map_lookup_elem(&km_service, &service_id);
	if (!svc)
		return -KM_EHOSTUNREACH;
	if (svc->flags || svc->lb_mode == KM_LB_MAGLEV) {
		int r = lb_choose(req, service_id, res);
		if (r < 0)
			return r;
		backend_id = r;
		svc = bpf_map_lookup_elem(&km_service, &service_id);
		if (!svc)
			return -KM_EHOSTUNREACH;
	} else {
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
		backend_id = ep->backend_id;
	}

	be = bpf_map_lookup_elem(&km_backend, &backend_id);
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
	/* Target port 0: the port the client dialed (KM_ANY_PORT). */
	res->port = fe->target_port ? fe->target_port : req->port;
	res->service_id = service_id;
	res->backend_id = backend_id;
	res->svc_flags = svc->flags;
	return 0;
}

#endif
