// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Same-node acceleration. Enrolled sockets join the km_socks sockhash when
 * they are established (sockops.c); when both ends of a connection are
 * there, each message is moved straight into the peer socket's receive
 * queue instead of through TCP/IP and loopback or veth. Connections to
 * other nodes, or to sockets not enrolled here, find no peer and pass
 * through TCP as usual, and so does every later message of a socket one of
 * whose messages went through TCP (KM_REDIR_TCP: the order of its bytes) or
 * whose peer held more unread bytes than TCP allows (skmsg_peer_full).
 * Handshake, FIN and RST still go through TCP, so
 * half-closes and resets behave as on plain TCP. A connection inside one
 * pod (loopback) is keyed by its network namespace too: the same loopback
 * 4-tuple in two pods names two connections (sock_key_scope).
 * Compiled as part of kmesh.c.
 */

/*
 * Set at load time: kmeshd --accelerate, off by default. Data redirected
 * into a socket waits in its psock queue, which recvmsg() reads but
 * splice(2) does not: a receiver that splices (Go's io.Copy between two
 * TCP connections, proxies) would see EOF instead of the data. Only
 * workloads known to read with recvmsg() may turn it on.
 */
volatile const bool km_accelerate = true;

static __always_inline void skmsg_reverse(const struct sock_key *key, struct sock_key *rev)
{
	__builtin_memcpy(rev->local_addr, key->remote_addr, sizeof(rev->local_addr));
	__builtin_memcpy(rev->remote_addr, key->local_addr, sizeof(rev->remote_addr));
	rev->local_port = key->remote_port;
	rev->remote_port = key->local_port;
	rev->netns_cookie = key->netns_cookie; /* see sock_key_scope */
}

/* Called when an enrolled socket is established. */
static __always_inline void skmsg_add(struct bpf_sock_ops *skops)
{
	struct sock_key key = {};
	__u64 zero = 0;

	if (!km_accelerate)
		return;
	sock_key_ops(skops, &key);
	sock_key_scope(&key, bpf_get_netns_cookie(skops));
	bpf_map_update_elem(&km_redir_bytes, &key, &zero, BPF_ANY);
	/* A full map only costs the speed-up. */
	bpf_sock_hash_update(skops, &km_socks, &key, BPF_NOEXIST);
}

/* Bytes a closing socket sent and received by redirect. */
static __always_inline void skmsg_redirected(struct bpf_sock_ops *skops, __u64 *sent, __u64 *received)
{
	struct sock_key key = {}, peer = {};
	__u64 *n;

	if (!km_accelerate)
		return;
	sock_key_ops(skops, &key);
	sock_key_scope(&key, bpf_get_netns_cookie(skops));
	skmsg_reverse(&key, &peer);
	n = bpf_map_lookup_elem(&km_redir_bytes, &key);
	if (n)
		*sent += *n & ~KM_REDIR_TCP;
	n = bpf_map_lookup_elem(&km_redir_bytes, &peer);
	if (n)
		*received += *n & ~KM_REDIR_TCP;
}

/*
 * Flow control. Redirected bytes wait in the peer's psock queue, which
 * nothing bounds: the kernel charges them to the peer's sk_rmem_alloc
 * (since Linux 6.13, "tcp_bpf: Charge receive socket buffer in
 * bpf_tcp_ingress()", and the stable kernels that took it) but checks only
 * the node's TCP memory, never the peer's sk_rcvbuf, so a receiver that
 * stops reading let its sender queue gigabytes until tcp_mem ran out
 * (ENOMEM). A socket whose peer holds more unread bytes than TCP would let
 * that peer hold (its receive buffer grown to the most autotuning gives:
 * its namespace's tcp_rmem[2], or its sk_rcvbuf when an application set
 * one larger) sends by TCP from then on: TCP's own flow control stops it,
 * as it would any TCP sender, and KM_REDIR_TCP keeps the order. The limit
 * is TCP's largest and not the peer's current sk_rcvbuf because an
 * accelerated socket never autotunes (its reads skip TCP's receive path):
 * its sk_rcvbuf stays at tcp_rmem[1] (128 KiB by default), and a reader
 * that merely lags behind a bulk sender would lose the speed-up.
 *
 * sk_msg cannot look the peer up (that needs bpf_sk_release, which sk_msg
 * may not call), and fentry/fexit on the kernel's read path, which could
 * count what the peer read, are refused on our kernels (EPERM). But the
 * peer is known once the redirect is set: the kernel's struct sk_msg, the
 * context of this program, holds it in sk_redir, and the peer's fields are
 * read from there with bpf_probe_read_kernel at CO-RE offsets (handing the
 * context's address to a helper takes CAP_PERFMON, which kmeshd has; a
 * kernel locked down for confidentiality refuses the helper, and the probe
 * then leaves acceleration off). Such reads never fault: a peer closing
 * meanwhile reads as whatever its memory holds, and the worst outcome is
 * one connection falling back to TCP early or not at all.
 */
/* How often a sender looks at its peer: reading the peer costs ~130 ns
 * (three reads of kernel memory, measured with bpf_stats on 6.18), more
 * than half of the rest of the program, which runs for every message; once
 * per 64 KiB sent it costs a 1 KiB-message stream ~2 ns a message, and the
 * bound gives up to 64 KiB more. */
#define KM_REDIR_CHECK_BYTES (64 << 10)

static __always_inline int skmsg_peer_full(struct sk_msg_md *md)
{
	struct sk_msg *msg = (struct sk_msg *)md;
	struct sock *peer = BPF_CORE_READ(msg, sk_redir);
	int rmem, rcvbuf, max;

	if (!peer)
		return 0;
	rmem = BPF_CORE_READ(peer, sk_backlog.rmem_alloc.counter);
	rcvbuf = BPF_CORE_READ(peer, sk_rcvbuf);
	if (rmem <= rcvbuf)
		return 0; /* what TCP itself accepts now: no more to read */
	max = BPF_CORE_READ(peer, __sk_common.skc_net.net, ipv4.sysctl_tcp_rmem[2]);
	return rmem > max;
}

SEC("sk_msg")
int km_skmsg(struct sk_msg_md *msg)
{
	struct sock_key self = {}, peer = {};
	__u64 *n, sent;

	if (msg->family == 2 /* AF_INET */) {
		lb_v4_mapped(self.local_addr, msg->local_ip4);
		lb_v4_mapped(self.remote_addr, msg->remote_ip4);
	} else {
		self.local_addr[0] = msg->local_ip6[0];
		self.local_addr[1] = msg->local_ip6[1];
		self.local_addr[2] = msg->local_ip6[2];
		self.local_addr[3] = msg->local_ip6[3];
		self.remote_addr[0] = msg->remote_ip6[0];
		self.remote_addr[1] = msg->remote_ip6[1];
		self.remote_addr[2] = msg->remote_ip6[2];
		self.remote_addr[3] = msg->remote_ip6[3];
	}
	self.local_port = (__u16)msg->local_port;
	self.remote_port = (__u16)bpf_ntohl(msg->remote_port);
	sock_key_scope(&self, bpf_get_netns_cookie(msg));
	skmsg_reverse(&self, &peer);

	/* No count (aged out of the LRU), or a message went through TCP
	 * before: TCP carries this one too, so nothing overtakes those bytes. */
	n = bpf_map_lookup_elem(&km_redir_bytes, &self);
	if (!n || (*n & KM_REDIR_TCP))
		return SK_PASS;
	if (bpf_msg_redirect_hash(msg, &km_socks, &peer, BPF_F_INGRESS) == SK_PASS) {
		sent = __sync_fetch_and_add(n, msg->size);
		/* This message goes to the peer either way (the redirect is
		 * set); the next ones go through TCP once the peer holds more
		 * than TCP would let it. Looked at each time the socket's
		 * redirected bytes cross a multiple of KM_REDIR_CHECK_BYTES,
		 * not for each message. */
		if ((sent ^ (sent + msg->size)) >= KM_REDIR_CHECK_BYTES && skmsg_peer_full(msg))
			__sync_fetch_and_or(n, KM_REDIR_TCP);
		return SK_PASS;
	}
	/* No peer here (another node, not enrolled, or not established yet):
	 * the message goes through TCP, and so will the next ones. */
	__sync_fetch_and_or(n, KM_REDIR_TCP);
	return SK_PASS;
}
