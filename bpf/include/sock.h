/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Per-socket maps, shared by the connect, sockops and sk_msg programs.
 * Their sizes follow the sockets, not the config: socket storage lives and
 * dies with its socket.
 */
#ifndef KMESH_SOCK_H
#define KMESH_SOCK_H

#include "types.h"

/* Original destination of each balanced socket, for getpeername(). */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_orig);
} km_sock_orig SEC(".maps");

/* The service and backend a connect chose, for outlier detection. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_lb);
} km_sock_lb SEC(".maps");

/* Per-connection state from establishment to close. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct sock_conn);
} km_sock_conn2 SEC(".maps"); /* 2: sock_conn grew its counters' key */

/* Enrolled sockets of this node by 4-tuple (and network namespace, see
 * sock_key_scope), for same-node acceleration (skmsg.c); the loader sets
 * the size. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, 1);
} km_socks SEC(".maps");

/*
 * Bytes each accelerated socket sent by redirect, by its sock_key. They
 * never pass TCP's counters, so telemetry adds them: a socket's own entry
 * to what it sent, its peer's (the reversed key) to what it received. An
 * LRU, because an entry must outlive its socket until the peer closes; a
 * socket zeroes its entry when established.
 */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct sock_key);
	__type(value, __u64);
	__uint(max_entries, 1);
} km_redir_bytes SEC(".maps");

/* Set in a socket's km_redir_bytes entry once one of its messages went
 * through TCP (its peer was not in km_socks yet: a server that defers
 * accept, a handshake still in flight), or is about to because its peer
 * holds too much unread (skmsg_peer_full): a later message redirected into
 * the peer's queue would be read before the bytes still waiting in the
 * peer's TCP queue (tcp_bpf_recvmsg reads its own queue first), so the
 * socket redirects nothing more and TCP keeps the order. */
#define KM_REDIR_TCP (1ULL << 63)

/* The socket's two addresses, v4 as v4-mapped v6, as every key built in
 * sockops holds them. */
static __always_inline void sock_addrs_ops(struct bpf_sock_ops *skops, __u32 local[4], __u32 remote[4])
{
	if (skops->family == 2 /* AF_INET */) {
		lb_v4_mapped(local, skops->local_ip4);
		lb_v4_mapped(remote, skops->remote_ip4);
	} else {
		local[0] = skops->local_ip6[0];
		local[1] = skops->local_ip6[1];
		local[2] = skops->local_ip6[2];
		local[3] = skops->local_ip6[3];
		remote[0] = skops->remote_ip6[0];
		remote[1] = skops->remote_ip6[1];
		remote[2] = skops->remote_ip6[2];
		remote[3] = skops->remote_ip6[3];
	}
}

/* The connection's 4-tuple from this socket's side, as sock_key holds it:
 * telemetry records and the acceleration sockhash both use it. */
static __always_inline void sock_key_ops(struct bpf_sock_ops *skops, struct sock_key *key)
{
	sock_addrs_ops(skops, key->local_addr, key->remote_addr);
	key->local_port = (__u16)skops->local_port;
	key->remote_port = (__u16)bpf_ntohl(skops->remote_port);
}

static __always_inline int sock_addr_loopback(const __u32 addr[4])
{
	if (addr[0] != 0 || addr[1] != 0)
		return 0;
	if (addr[2] == bpf_htonl(0x0000ffff)) /* 127.0.0.0/8 */
		return (addr[3] & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return addr[2] == 0 && addr[3] == bpf_htonl(1); /* ::1 */
}

/*
 * Sets the network namespace of a sock_key. A connection between two
 * namespaces (pods of one node over their veths) has addresses that are
 * the node's only ones, so its 4-tuple names it alone; it must stay so, for
 * a socket looking for its peer (sk_msg) knows only its own namespace, not
 * the peer's, and the peer's entry must be found under the reversed key.
 * A connection that never leaves its namespace (over loopback, or to the
 * pod's own address) can have the very same 4-tuple in every pod, and
 * without the namespace in its key one pod's bytes would be redirected into
 * another pod's socket. Both its ends are in one namespace, so the sender's
 * cookie is also the peer's, and the reversed key still finds the peer. The
 * test is symmetric (either address loopback, or both equal), so both ends
 * of a connection key it the same way.
 */
static __always_inline void sock_key_scope(struct sock_key *key, __u64 netns_cookie)
{
	int own = sock_addr_loopback(key->local_addr) || sock_addr_loopback(key->remote_addr) ||
		  (key->local_addr[0] == key->remote_addr[0] && key->local_addr[1] == key->remote_addr[1] &&
		   key->local_addr[2] == key->remote_addr[2] && key->local_addr[3] == key->remote_addr[3]);

	key->netns_cookie = own ? netns_cookie : 0;
}

#endif
