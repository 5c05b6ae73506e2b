// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Destination side of authorization. Every SYN that reaches a listening
 * socket of this node's cgroup is checked against the policies of the
 * workload at its destination address (include/authz.h); a denied SYN is
 * dropped, so no SYN-ACK ever leaves and the client, in the mesh or not, on
 * this node or another, never completes a handshake (it times out). Until
 * mutual TLS exists, the source is known only by its address: any process
 * that can send from a workload's address passes as that workload.
 *
 * Why cgroup_skb/ingress on the cgroup kmeshd attaches to, rather than tc
 * or XDP on each pod's veth: it is attached like every other program (one
 * cgroup, pinned links, link.Update on upgrade) with no per-pod interface to
 * find, follow and detach; it runs in the TCP receive path after the socket
 * lookup (tcp_filter, before the SYN is answered), so it sees the listener
 * the SYN is for and leaves every other packet at the cost of one field
 * read; and it covers loopback and same-node traffic, which never crosses a
 * veth. It needs the workloads' processes in that cgroup or below it, which
 * is where the connect hooks need them too.
 * Compiled as part of kmesh.c.
 */

#define KM_ETH_P_IP 0x0800
#define KM_ETH_P_IPV6 0x86DD
#define KM_TCP_SYN 0x02
#define KM_TCP_ACK 0x10

/* IPv6 extension headers the parser steps over to find TCP. */
#define KM_NEXTHDR_HOP 0
#define KM_NEXTHDR_ROUTING 43
#define KM_NEXTHDR_FRAGMENT 44
#define KM_NEXTHDR_AUTH 51
#define KM_NEXTHDR_DEST 60
#define KM_IPV6_MAX_EXT 8

/* Results of ingress_parse. */
#define KM_PARSE_SYN 1     /* a SYN without ACK: a new connection */
#define KM_PARSE_OTHER 0   /* anything else: not ours to judge */
#define KM_PARSE_UNKNOWN -1 /* IPv6 whose TCP header could not be found */

/* Reads the destination port of the TCP header at off; tells a SYN. */
static __always_inline int ingress_tcp(struct __sk_buff *skb, __u32 off, __u16 *port)
{
	__u8 hdr[14];

	if (bpf_skb_load_bytes(skb, off, hdr, sizeof(hdr)) < 0)
		return KM_PARSE_OTHER;
	__builtin_memcpy(port, &hdr[2], sizeof(*port)); /* network order */
	if ((hdr[13] & (KM_TCP_SYN | KM_TCP_ACK)) != KM_TCP_SYN)
		return KM_PARSE_OTHER;
	return KM_PARSE_SYN;
}

static __always_inline int ingress_parse(struct __sk_buff *skb, __u32 src[4], __u32 dst[4], __u16 *port)
{
	if (skb->protocol == bpf_htons(KM_ETH_P_IP)) {
		struct iphdr ip;

		if (bpf_skb_load_bytes(skb, 0, &ip, sizeof(ip)) < 0)
			return KM_PARSE_OTHER;
		lb_v4_mapped(src, ip.saddr);
		lb_v4_mapped(dst, ip.daddr);
		/* Fragments are reassembled before the socket sees them. */
		if (ip.protocol != IPPROTO_TCP || (ip.frag_off & bpf_htons(0x1fff)))
			return KM_PARSE_OTHER;
		return ingress_tcp(skb, ip.ihl * 4, port);
	}
	if (skb->protocol == bpf_htons(KM_ETH_P_IPV6)) {
		struct ipv6hdr ip6;
		__u32 off = sizeof(ip6);
		__u8 next;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return KM_PARSE_OTHER;
		__builtin_memcpy(src, &ip6.saddr, 16);
		__builtin_memcpy(dst, &ip6.daddr, 16);
		next = ip6.nexthdr;
		for (int i = 0; i < KM_IPV6_MAX_EXT; i++) {
			__u8 ext[2];

			if (next == IPPROTO_TCP)
				return ingress_tcp(skb, off, port);
			if (next != KM_NEXTHDR_HOP && next != KM_NEXTHDR_ROUTING && next != KM_NEXTHDR_FRAGMENT &&
			    next != KM_NEXTHDR_AUTH && next != KM_NEXTHDR_DEST)
				return KM_PARSE_OTHER; /* not TCP */
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)) < 0)
				return KM_PARSE_UNKNOWN;
			if (next == KM_NEXTHDR_FRAGMENT)
				off += 8;
			else if (next == KM_NEXTHDR_AUTH)
				off += ((__u32)ext[1] + 2) * 4;
			else
				off += ((__u32)ext[1] + 1) * 8;
			next = ext[0];
		}
		return KM_PARSE_UNKNOWN;
	}
	return KM_PARSE_OTHER;
}

SEC("cgroup_skb/ingress")
int km_ingress(struct __sk_buff *skb)
{
	__u32 src[4], dst[4], policy_id;
	struct bpf_sock *sk;
	__u16 port = 0;
	int ret;

	if (!km_authz)
		return 1;
	/* Only a listener gets new connections; every other packet goes on
	 * after this one read. */
	sk = skb->sk;
	if (!sk)
		return 1;
	sk = bpf_sk_fullsock(sk);
	if (!sk || sk->state != BPF_TCP_LISTEN || sk->protocol != IPPROTO_TCP)
		return 1;
	/* HBONE is authorized by the tunnel on the peer's certificate: its
	 * listener, and its connections to the application it authorized. */
	if (tunnel_own(sk) || skb->mark == KM_TUNNEL_MARK)
		return 1;
	ret = ingress_parse(skb, src, dst, &port);
	if (ret == KM_PARSE_OTHER)
		return 1;
	if (ret == KM_PARSE_UNKNOWN) {
		/* An extension header chain too long to follow: fail closed
		 * for a workload with policies, as a SYN might hide there. */
		struct authz_addr_key k = {};

		__builtin_memcpy(k.addr, dst, sizeof(k.addr));
		return bpf_map_lookup_elem(&km_authz_addr, &k) ? 0 : 1;
	}
	return authz_at_destination(src, dst, port, &policy_id) == KM_AUTHZ_DENIED ? 0 : 1;
}
