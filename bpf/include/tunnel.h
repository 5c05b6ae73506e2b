/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Selective HBONE: which connections go through the tunnel process, and how
 * it finds their destination. Only a connection of an enrolled workload to
 * an address in km_tunnel (a workload of another node that takes HBONE) is
 * redirected, to the tunnel's loopback listener in the client's own network
 * namespace; everything else keeps the one-hop path. The tunnel's own
 * sockets carry SO_MARK KM_TUNNEL_MARK and pass every hook untouched, and so
 * does the socket an application accepts from the tunnel (km_tunnel_legs).
 *
 * The destination travels in two steps, because connect() has no source
 * port yet: the connect hook keeps it in the socket's storage, and sockops
 * (TCP_CONNECT_CB, before the SYN) copies it into km_tunnel_dst under the
 * socket's address and port, where the tunnel looks it up on accept.
 */
#ifndef KMESH_TUNNEL_H
#define KMESH_TUNNEL_H

#include "lb.h"
#include "sock.h"

/* Workload addresses of other nodes that take HBONE; written by
 * internal/dataplane. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_addr_key);
	__type(value, struct tunnel_value);
	__uint(max_entries, 1);
} km_tunnel SEC(".maps");

/* Destination of each redirected socket until it has a port. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct tunnel_dst);
} km_tunnel_sk SEC(".maps");

/* Destination of each redirected connection by its client address and
 * port; the tunnel deletes an entry when it takes the connection. An LRU,
 * so entries of connections the tunnel never took age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct tunnel_key);
	__type(value, struct tunnel_dst);
	__uint(max_entries, 1);
} km_tunnel_dst SEC(".maps");

/* The addresses of each enrolled namespace's workload, keyed by its netns
 * cookie; written by internal/dataplane (tunnelsrc.go). A redirected socket
 * is bound to its pod's address before it connects to the tunnel's loopback
 * listener, so getsockname() shows the pod address, as through ztunnel,
 * not 127.0.0.1. The same fields as the workload's backend. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct backend_value);
	__uint(max_entries, 1);
} km_tunnel_src SEC(".maps");

/*
 * The application's side of inbound tunnelled connections. The tunnel
 * dials the application inside its pod's network namespace, from the pod's
 * own address, with its mark; the socket the application accepts has no
 * mark (it takes its listener's: tcp_fwmark_accept, which gives it the
 * SYN's, is read-only in an unprivileged container). So the tunnel's
 * socket, established, leaves the connection here as the application's
 * socket sees it (tunnel_leg_dialed), and the application's socket, when
 * the tunnel's ACK establishes it, takes it out and is left alone
 * (tunnel_leg_accepted). Within one namespace the order holds: TCP sends
 * that ACK only after the dialing socket's ACTIVE_ESTABLISHED callback
 * (tcp_finish_connect, then tcp_send_ack). An entry lives from one to the
 * other; an LRU ages out one whose application socket never came.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_key);
	__type(value, __u8);
	__uint(max_entries, 4096);
} km_tunnel_legs SEC(".maps");

/* Whether a socket is the tunnel's own. */
static __always_inline int tunnel_own(struct bpf_sock *sk)
{
	return sk && sk->mark == KM_TUNNEL_MARK;
}

/* Whether a socket is an application's connection the connect hook sent to
 * the tunnel. The tunnel counts it (both principals, reporter source on
 * this node, destination on the peer's), so the kernel's telemetry leaves
 * it out: one connection, counted once per reporter. */
static __always_inline int tunnel_redirected(struct bpf_sock *sk)
{
	return sk && bpf_sk_storage_get(&km_tunnel_sk, sk, 0, 0);
}

/* sockops ACTIVE_ESTABLISHED_CB of a tunnel's socket: a connection that
 * stays in its namespace is a dial into a pod's application (its HBONE
 * connections leave the pod), kept under the application's 4-tuple. */
static __always_inline void tunnel_leg_dialed(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};
	__u8 one = 1;

	sock_addrs_ops(skops, key.remote_addr, key.local_addr); /* the peer's view */
	key.remote_port = (__u16)skops->local_port;
	key.local_port = (__u16)bpf_ntohl(skops->remote_port);
	sock_key_scope(&key, bpf_get_netns_cookie(skops));
	if (key.netns_cookie)
		bpf_map_update_elem(&km_tunnel_legs, &key, &one, BPF_ANY);
}

/* sockops PASSIVE_ESTABLISHED_CB: whether this accepted socket is the
 * application's side of a connection the tunnel dialed. The tunnel counts
 * and authorized that connection, so, as for the tunnel's own sockets,
 * nothing here touches it: no telemetry, no acceleration. */
static __always_inline int tunnel_leg_accepted(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};

	sock_key_ops(skops, &key);
	sock_key_scope(&key, bpf_get_netns_cookie(skops));
	return key.netns_cookie && bpf_map_delete_elem(&km_tunnel_legs, &key) == 0;
}

/*
 * Decides whether a connect() to addr (the chosen endpoint, or the address
 * dialed) goes through the tunnel: 1 when it does, 0 when it keeps the
 * direct path.
 */
static __always_inline int tunnel_wanted(__u64 netns_cookie, const __u32 addr[4])
{
	struct manage_key mkey = { .netns_cookie = netns_cookie };
	struct authz_addr_key key = {};
	struct tunnel_value *tv;

	__builtin_memcpy(key.addr, addr, sizeof(key.addr));
	tv = bpf_map_lookup_elem(&km_tunnel, &key);
	if (!tv || tv->proto != KM_TUNNEL_HBONE)
		return 0;
	return bpf_map_lookup_elem(&km_manage, &mkey) != 0;
}

/* Keeps where the connect was going in the socket's storage: addr:port in
 * the socket's family, and svc:svc_port, the service address the client
 * dialed when the kernel balanced it (NULL otherwise; the tunnel names it
 * as the authority to a waypoint). Written in place, not through the
 * stack: connect4's call chain is near the 512-byte limit. 0 on success. */
static __always_inline int tunnel_remember(struct bpf_sock *sk, const __u32 addr[4], __u16 port, __u8 family,
					   const __u32 *svc, __u16 svc_port)
{
	struct tunnel_dst *d = bpf_sk_storage_get(&km_tunnel_sk, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!d)
		return -1;
	__builtin_memcpy(d->addr, addr, sizeof(d->addr));
	d->port = port;
	d->family = family;
	d->has_svc = 0;
	if (svc) {
		__builtin_memcpy(d->svc_addr, svc, sizeof(d->svc_addr));
		d->svc_port = svc_port;
		d->has_svc = 1;
	}
	return 0;
}

/* sockops TCP_CONNECT_CB: a redirected socket now has its port. The
 * backend outlier detection watches moves along with the destination: this
 * socket's connect (to the tunnel) says nothing about the backend, so the
 * tunnel credits its HBONE connect instead. */
static __always_inline void tunnel_connecting(struct bpf_sock_ops *skops)
{
	struct tunnel_key key = {};
	struct tunnel_dst *d, v;
	struct sock_lb *sl;
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	d = bpf_sk_storage_get(&km_tunnel_sk, sk, 0, 0);
	if (!d)
		return;
	v = *d;
	v.has_lb = 0;
	sl = bpf_sk_storage_get(&km_sock_lb, sk, 0, 0);
	if (sl) {
		v.lb = *sl;
		v.has_lb = 1;
		bpf_sk_storage_delete(&km_sock_lb, sk);
	}
	key.netns_cookie = bpf_get_netns_cookie(skops);
	if (skops->family == 2 /* AF_INET */) {
		lb_v4_mapped(key.addr, skops->local_ip4);
	} else {
		key.addr[0] = skops->local_ip6[0];
		key.addr[1] = skops->local_ip6[1];
		key.addr[2] = skops->local_ip6[2];
		key.addr[3] = skops->local_ip6[3];
	}
	key.port = (__u16)skops->local_port;
	bpf_map_update_elem(&km_tunnel_dst, &key, &v, BPF_ANY);
}

/* Binds a redirected socket to its pod's address of the destination's
 * family (the socket still picks its port at connect, as unbound). The
 * tunnel's listener on loopback accepts it from there, and finds the
 * destination under that address, which sockops reads from the socket.
 * Nothing to bind to (the namespace's workload is not known yet, or has no
 * address of that family), or a socket the application bound already
 * (bpf_bind fails with EINVAL): it connects from what it would have,
 * loopback or its own bind, and is tunnelled the same. */
static __always_inline void tunnel_bind4(struct bpf_sock_addr *ctx, __u64 cookie)
{
	struct backend_value *b = bpf_map_lookup_elem(&km_tunnel_src, &cookie);
	struct sockaddr_in sa = {};

	if (!b || !(b->flags & KM_BACKEND_HAS_V4))
		return;
	sa.sin_family = 2; /* AF_INET */
	sa.sin_addr.s_addr = b->addr4;
	bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
}

/* The same for an IPv6 socket: its pod's IPv6 address, or its IPv4 one
 * IPv4-mapped when it dials an IPv4 destination (family KM_FAMILY_V4). */
static __always_inline void tunnel_bind6(struct bpf_sock_addr *ctx, __u64 cookie, __u8 family)
{
	struct backend_value *b = bpf_map_lookup_elem(&km_tunnel_src, &cookie);
	struct sockaddr_in6 sa = {};

	if (!b)
		return;
	sa.sin6_family = 10; /* AF_INET6 */
	if (family == KM_FAMILY_V4) {
		if (!(b->flags & KM_BACKEND_HAS_V4))
			return;
		sa.sin6_addr.in6_u.u6_addr32[2] = bpf_htonl(0x0000ffff);
		sa.sin6_addr.in6_u.u6_addr32[3] = b->addr4;
	} else {
		if (!(b->flags & KM_BACKEND_HAS_V6))
			return;
		sa.sin6_addr.in6_u.u6_addr32[0] = b->addr6[0];
		sa.sin6_addr.in6_u.u6_addr32[1] = b->addr6[1];
		sa.sin6_addr.in6_u.u6_addr32[2] = b->addr6[2];
		sa.sin6_addr.in6_u.u6_addr32[3] = b->addr6[3];
	}
	bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
}

/* Sends an IPv4 connect() to the tunnel: 127.0.0.1:KM_TUNNEL_OUTBOUND_PORT,
 * after keeping its destination (tunnel_remember's arguments). Returns 0
 * when the connect proceeds there, -1 when the destination could not be
 * kept (the connect must fail: never plaintext). */
static __always_inline int tunnel_redirect4(struct bpf_sock_addr *ctx, const __u32 addr[4], __u16 port,
					    const __u32 *svc, __u16 svc_port)
{
	if (tunnel_remember(ctx->sk, addr, port, KM_FAMILY_V4, svc, svc_port))
		return -1;
	ctx->user_ip4 = bpf_htonl(0x7f000001);
	ctx->user_port = (__u32)bpf_htons(KM_TUNNEL_OUTBOUND_PORT);
	tunnel_bind4(ctx, bpf_get_netns_cookie(ctx));
	return 0;
}

/* The same for IPv6 sockets: [::1], or ::ffff:127.0.0.1 for an IPv4
 * destination of a dual-stack socket (family KM_FAMILY_V4). */
static __always_inline int tunnel_redirect6(struct bpf_sock_addr *ctx, const __u32 addr[4], __u16 port, __u8 family,
					    const __u32 *svc, __u16 svc_port)
{
	if (tunnel_remember(ctx->sk, addr, port, family, svc, svc_port))
		return -1;
	if (family == KM_FAMILY_V4) {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = bpf_htonl(0x0000ffff);
		ctx->user_ip6[3] = bpf_htonl(0x7f000001);
	} else {
		ctx->user_ip6[0] = 0;
		ctx->user_ip6[1] = 0;
		ctx->user_ip6[2] = 0;
		ctx->user_ip6[3] = bpf_htonl(1);
	}
	ctx->user_port = (__u32)bpf_htons(KM_TUNNEL_OUTBOUND_PORT);
	/* Last: bound before the writes above, clang addresses user_ip6
	 * through a moved ctx pointer, which the verifier refuses. */
	tunnel_bind6(ctx, bpf_get_netns_cookie(ctx), family);
	return 0;
}

/* getpeername() of a redirected socket shows where it was going, unless a
 * service address is kept (km_sock_orig), which wins. Returns 1 when dst
 * is filled. */
static __always_inline int tunnel_peer(struct bpf_sock *sk, struct tunnel_dst *dst)
{
	struct tunnel_dst *d = bpf_sk_storage_get(&km_tunnel_sk, sk, 0, 0);

	if (!d)
		return 0;
	*dst = *d;
	return 1;
}

#endif
