/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * L4 authorization: Istio's AuthorizationPolicy semantics (internal/authz
 * documents them) over the tables internal/dataplane compiles policies
 * into (types.h explains the tables). Decided twice per connection: at
 * connect() on the client's node (connect.c: a mesh client fails at once),
 * and on the SYN at the server's node (ingress.c: no client, in the mesh or
 * not, ever completes a handshake with a workload that refuses it).
 *
 * The work is bounded by the tables: one lookup per policy list entry, per
 * match and per field a match tests (identities, ports: one hash lookup;
 * address blocks: one trie lookup). bpf_loop (5.17) walks lists and matches,
 * so the verifier checks each step once whatever the number of policies.
 * These helpers take no hook context, so a syscall program can run them
 * under BPF_PROG_TEST_RUN (bpf/tests/authz_test.c).
 */
#ifndef KMESH_AUTHZ_H
#define KMESH_AUTHZ_H

#include "lb.h"

/* Set at load time: false when the kernel lacks bpf_loop, and then no
 * policy is enforced (kmeshd says so loudly). */
volatile const bool km_authz = true;

/* A connection to check. Addresses as in frontend_key (IPv4-mapped,
 * network order). */
struct authz_request {
	__u32 src[4];
	__u32 dst[4];
	__u64 identity; /* of the source; 0: none known */
	__u16 dst_port; /* network order */
	__u8 side;      /* enum km_authz_side */
	__u8 pad[5];
};

/* One policy's walk over its matches, with the connection's fields it
 * tests (copied: a global function cannot follow pointers). */
struct authz_policy_walk {
	__u32 src[4];
	__u32 dst[4];
	__u64 identity;
	__u32 policy_id;
	__u32 skip_to; /* entries before it belong to a rule that failed */
	__u16 port;    /* host order */
	__u8 gen;
	__u8 clause_ok;
	__u8 matched;
	__u8 torn; /* an entry vanished: the policy changed under the walk */
	__u8 pad[2];
};

/* A run of one action's entries in one list. */
struct authz_segment {
	__u32 list_id;
	__u16 base; /* index of its first entry */
	__u16 n;
};

#define KM_AUTHZ_SEGMENTS 9 /* 3 lists (global, namespace, selector) x 3 actions */

/* A decision in progress: the DENY segments, then ALLOW, then counted;
 * a step looks at one policy. */
struct authz_decision {
	struct authz_request req;
	struct authz_segment seg[KM_AUTHZ_SEGMENTS];
	__u32 hit;    /* the policy that decided; 0: none */
	__u32 allows; /* ALLOW policies that apply */
	__u16 idx;    /* next policy of the current segment */
	__u8 cur;     /* current segment */
	__u8 nseg;
	__u8 first_allow;
	__u8 first_count;
	__s8 verdict; /* enum km_authz_verdict; -1: not decided yet */
	__u8 retried;
};

/* The label of an address in a match's blocks of one kind. */
static __always_inline int authz_ip(const struct authz_policy_walk *w, __u16 index, __u8 kind,
				    const __u32 addr[4])
{
	struct authz_ip_key k = {
		.prefixlen = 64 + 128,
		.policy_id = w->policy_id,
		.index = index,
		.gen = w->gen,
		.kind = kind,
	};
	__u8 *label;

	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	label = bpf_map_lookup_elem(&km_authz_ip, &k);
	return label && *label;
}

/* Whether one match (every field it tests) matches the connection. A
 * global function: the verifier checks it once, not on every path of the
 * walk. */
__attribute__((noinline)) int authz_match_one(const struct authz_policy_walk *w, __u16 flags, __u16 index)
{
	struct authz_val_key k = {};
	__u8 *label;

	if (!w)
		return 0;
	k.policy_id = w->policy_id;
	k.index = index;
	k.gen = w->gen;
	if (flags & KM_AUTHZ_IDENTITY) {
		k.kind = KM_AUTHZ_KIND_IDENTITY;
		k.value = w->identity;
		int in = bpf_map_lookup_elem(&km_authz_val, &k) != NULL;
		if (in == !!(flags & KM_AUTHZ_IDENTITY_NOT))
			return 0;
	}
	if (flags & KM_AUTHZ_PORT) {
		k.kind = KM_AUTHZ_KIND_PORT;
		k.value = w->port;
		label = bpf_map_lookup_elem(&km_authz_val, &k);
		if (label ? !*label : !(flags & KM_AUTHZ_PORT_DEFAULT))
			return 0;
	}
	if ((flags & KM_AUTHZ_SRC_IP) && !authz_ip(w, index, KM_AUTHZ_KIND_SRC_IP, w->src))
		return 0;
	if ((flags & KM_AUTHZ_DST_IP) && !authz_ip(w, index, KM_AUTHZ_KIND_DST_IP, w->dst))
		return 0;
	return 1;
}

/* bpf_loop callback: entry i of a policy. A clause holds when one of its
 * matches does; a clause that fails skips the rest of its rule; the policy
 * matches at the end of a rule whose clauses all held. */
static long authz_match_cb(__u64 i, void *ctx)
{
	struct authz_policy_walk *w = ctx;
	struct authz_match_key key = {
		.policy_id = w->policy_id,
		.index = (__u16)i,
		.gen = w->gen,
	};
	struct authz_match *e;

	if (i < w->skip_to)
		return 0;
	e = bpf_map_lookup_elem(&km_authz_match, &key);
	if (!e) {
		w->torn = 1;
		return 1;
	}
	if (e->flags & KM_AUTHZ_CLAUSE_START)
		w->clause_ok = 0;
	if (!w->clause_ok && authz_match_one(w, e->flags, (__u16)i))
		w->clause_ok = 1;
	if (e->flags & KM_AUTHZ_CLAUSE_END) {
		if (!w->clause_ok) {
			w->skip_to = e->next_rule;
			return 0;
		}
		if (e->flags & KM_AUTHZ_RULE_END) {
			w->matched = 1;
			return 1;
		}
	}
	return 0;
}

static __always_inline void authz_count(__u32 policy_id, __u8 verdict, __u8 side)
{
	struct authz_stat *s = bpf_map_lookup_elem(&km_authz_stats, &policy_id);

	if (!s)
		return;
	side &= 1;
	/* Per CPU: no other writer. */
	if (verdict == KM_AUTHZ_ALLOWED)
		s->allowed[side] += 1;
	else if (verdict == KM_AUTHZ_DENIED)
		s->denied[side] += 1;
	else
		s->matched[side] += 1;
}

static __always_inline void authz_segment(struct authz_decision *d, const struct authz_list_ref *ref,
					  __u8 action)
{
	__u8 i = d->nseg;
	__u16 base = 0;

	if (!ref->id || !ref->n[action] || i >= KM_AUTHZ_SEGMENTS)
		return;
	/* A list holds its DENY entries, then ALLOW, then counted. */
	if (action == KM_AUTHZ_ALLOW)
		base = ref->n[KM_AUTHZ_DENY];
	else if (action == KM_AUTHZ_COUNT)
		base = ref->n[KM_AUTHZ_DENY] + ref->n[KM_AUTHZ_ALLOW];
	d->seg[i].list_id = ref->id;
	d->seg[i].base = base;
	d->seg[i].n = ref->n[action];
	d->nseg = i + 1;
}

/*
 * Lays out the walk from the destination's lists and the global one.
 * Returns 0 when the destination is no workload of the mesh. Global, so
 * the verifier checks it once.
 */
__attribute__((noinline)) int authz_plan(struct authz_decision *d)
{
	struct authz_addr_key dk = {};
	struct authz_list_ref *glob, none = {};
	struct authz_peer *dst;
	__u32 zero = 0;

	if (!d)
		return 0;
	__builtin_memcpy(dk.addr, d->req.dst, sizeof(dk.addr));
	dst = bpf_map_lookup_elem(&km_authz_addr, &dk);
	if (!dst)
		return 0;
	glob = bpf_map_lookup_elem(&km_authz_glob, &zero);
	if (!glob)
		glob = &none;
	d->nseg = 0;
	d->cur = 0;
	d->idx = 0;
	d->hit = 0;
	d->verdict = -1;
	authz_segment(d, glob, KM_AUTHZ_DENY);
	authz_segment(d, &dst->lists[0], KM_AUTHZ_DENY);
	authz_segment(d, &dst->lists[1], KM_AUTHZ_DENY);
	d->first_allow = d->nseg;
	authz_segment(d, glob, KM_AUTHZ_ALLOW);
	authz_segment(d, &dst->lists[0], KM_AUTHZ_ALLOW);
	authz_segment(d, &dst->lists[1], KM_AUTHZ_ALLOW);
	d->first_count = d->nseg;
	d->allows = glob->n[KM_AUTHZ_ALLOW] + dst->lists[0].n[KM_AUTHZ_ALLOW] + dst->lists[1].n[KM_AUTHZ_ALLOW];
	authz_segment(d, glob, KM_AUTHZ_COUNT);
	authz_segment(d, &dst->lists[0], KM_AUTHZ_COUNT);
	authz_segment(d, &dst->lists[1], KM_AUTHZ_COUNT);
	return 1;
}

/* Where the walk goes when the tables changed under it: once, back to the
 * start with the lists as they are now; after that, the connection is
 * denied (a client retry finds the tables settled). While counting, the
 * decision stands and only the counts stop. */
static __always_inline long authz_torn(struct authz_decision *d)
{
	if (d->cur >= d->first_count)
		return 1;
	if (d->retried || !authz_plan(d)) {
		d->verdict = d->retried ? KM_AUTHZ_DENIED : KM_AUTHZ_PASS;
		d->hit = 0;
		return 1;
	}
	d->retried = 1;
	return 0;
}

/* bpf_loop callback: one policy of the walk. */
static long authz_step_cb(__u64 i, void *ctx)
{
	struct authz_decision *d = ctx;
	struct authz_policy_walk pw = { .identity = d->req.identity };
	struct authz_list_key lk;
	struct authz_segment *s;
	struct authz_policy *pol;
	__u8 cur = d->cur;
	__u32 *id;

	/* Past the DENY and ALLOW segments the verdict is known. */
	if (cur == d->first_count && d->verdict < 0)
		d->verdict = d->allows ? KM_AUTHZ_DENIED : KM_AUTHZ_ALLOWED;
	if (cur >= d->nseg || cur >= KM_AUTHZ_SEGMENTS)
		return 1;
	s = &d->seg[cur];
	lk.id = s->list_id;
	lk.index = (__u32)s->base + d->idx;
	id = bpf_map_lookup_elem(&km_authz_list, &lk);
	if (!id)
		return authz_torn(d);
	pol = bpf_map_lookup_elem(&km_authz_pol, id);
	if (!pol)
		return authz_torn(d);
	__builtin_memcpy(pw.src, d->req.src, sizeof(pw.src));
	__builtin_memcpy(pw.dst, d->req.dst, sizeof(pw.dst));
	pw.policy_id = *id;
	pw.gen = pol->gen;
	pw.port = bpf_ntohs(d->req.dst_port);
	bpf_loop(pol->matches, authz_match_cb, &pw, 0);
	if (pw.torn)
		return authz_torn(d);

	if (pw.matched && cur >= d->first_count) {
		authz_count(pw.policy_id, KM_AUTHZ_PASS, d->req.side);
	} else if (pw.matched) {
		/* The first DENY or ALLOW that matches decides; on to counting. */
		d->hit = pw.policy_id;
		d->verdict = cur < d->first_allow ? KM_AUTHZ_DENIED : KM_AUTHZ_ALLOWED;
		d->cur = d->first_count;
		d->idx = 0;
		return 0;
	}
	if (++d->idx >= s->n) {
		d->cur = cur + 1;
		d->idx = 0;
	}
	return 0;
}

/*
 * Decides a connection. Returns KM_AUTHZ_PASS when the destination is no
 * workload of the mesh (or the mesh has no policies), else the verdict,
 * with the id of the policy that made it in *policy_id (0: none did), and
 * counts it in km_authz_stats.
 *
 * A global function, not inlined: the verifier checks it once, on its
 * own, instead of once per path of each program that calls it.
 */
__attribute__((noinline)) int authz_decide(const struct authz_request *req, __u32 *policy_id)
{
	struct authz_decision d = {};
	__u32 steps = 0;

	if (!req || !policy_id)
		return KM_AUTHZ_PASS;
	d.req = *req;
	*policy_id = 0;
	if (!authz_plan(&d))
		return KM_AUTHZ_PASS;
	for (int i = 0; i < KM_AUTHZ_SEGMENTS; i++)
		if (i < d.nseg)
			steps += d.seg[i].n;
	/* Each policy once, all of them again after a retry, and one step to
	 * settle the verdict. */
	bpf_loop(2 * steps + 1, authz_step_cb, &d, 0);
	if (d.verdict < 0 && d.cur >= d.first_count)
		d.verdict = d.allows ? KM_AUTHZ_DENIED : KM_AUTHZ_ALLOWED;
	if (d.verdict < 0) {
		/* A retry found more to walk than the steps left: deny. */
		d.verdict = KM_AUTHZ_DENIED;
		d.hit = 0;
	}
	if (d.verdict == KM_AUTHZ_PASS)
		return KM_AUTHZ_PASS;
	*policy_id = d.hit;
	authz_count(d.hit, d.verdict, req->side);
	return d.verdict;
}

/* The identity of the workload at a source address; 0 when none. */
static __always_inline __u64 authz_identity_at(const __u32 addr[4])
{
	struct authz_addr_key k = {};
	struct authz_peer *p;

	__builtin_memcpy(k.addr, addr, sizeof(k.addr));
	p = bpf_map_lookup_elem(&km_authz_addr, &k);
	return p ? p->identity : 0;
}

/* Destination side: a SYN from src to dst:port (network order). */
static __always_inline int authz_at_destination(const __u32 src[4], const __u32 dst[4], __u16 port,
						__u32 *policy_id)
{
	struct authz_request req = { .dst_port = port, .side = KM_AUTHZ_DESTINATION };

	__builtin_memcpy(req.src, src, sizeof(req.src));
	__builtin_memcpy(req.dst, dst, sizeof(req.dst));
	req.identity = authz_identity_at(src);
	return authz_decide(&req, policy_id);
}

/*
 * Source side: a connect() from the enrolled network namespace cookie to
 * dst:port (network order; dst IPv4-mapped for IPv4). The workload's
 * identity and address come from km_authz_netns, since the socket has no
 * address yet. A namespace kmeshd knows no workload of, or a workload
 * without an address of dst's family, is not checked here: the
 * destination's node still is.
 */
static __always_inline int authz_at_source(__u64 cookie, const __u32 dst[4], __u16 port, __u32 *policy_id)
{
	struct authz_request req = { .dst_port = port, .side = KM_AUTHZ_SOURCE };
	struct authz_self *self;

	*policy_id = 0;
	self = bpf_map_lookup_elem(&km_authz_netns, &cookie);
	if (!self)
		return KM_AUTHZ_PASS;
	if (lb_is_v4_mapped(dst)) {
		if (!(self->flags & KM_BACKEND_HAS_V4))
			return KM_AUTHZ_PASS;
		lb_v4_mapped(req.src, self->addr4);
	} else {
		if (!(self->flags & KM_BACKEND_HAS_V6))
			return KM_AUTHZ_PASS;
		__builtin_memcpy(req.src, self->addr6, sizeof(req.src));
	}
	__builtin_memcpy(req.dst, dst, sizeof(req.dst));
	req.identity = self->identity;
	return authz_decide(&req, policy_id);
}

#endif
