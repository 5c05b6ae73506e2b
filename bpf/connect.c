// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connect-time service load balancing. For a TCP socket of an enrolled
 * network namespace that connects to a service address and port, the
 * destination is rewritten to a chosen endpoint before the SYN is sent;
 * getpeername() then shows the service address again. Then the client side
 * of authorization: a connect of an enrolled workload to a workload the
 * policies do not let it reach fails at once with EACCES (include/authz.h).
 * Everything else passes untouched.
 */
/* Compiled as part of kmesh.c. */

/* A service with no endpoint fails the connect with KM_ECONNREFUSED (lb.h),
 * the same error as a refused connection, at once, instead of a SYN to
 * nowhere. */

/* Set at load time from a kernel probe: bpf_set_retval came in 5.18.
 * Without it, a refused connect fails with EPERM. */
volatile const bool km_have_set_retval = true;

static __always_inline int connect_refuse(void)
{
	if (km_have_set_retval)
		bpf_set_retval(-KM_ECONNREFUSED);
	return 0;
}

/* Returned to the application when a policy denies the connection:
 * "permission denied", at once; EPERM without bpf_set_retval. */
#define KM_EACCES 13

/* Whether the policies deny a TCP connect from this namespace to dst:port
 * (the chosen endpoint, or the address as dialed when it is no service). */
static __always_inline int connect_denied(__u64 cookie, __u8 proto, const __u32 dst[4], __u16 port)
{
	__u32 policy_id;

	if (!km_authz || proto != IPPROTO_TCP)
		return 0;
	return authz_at_source(cookie, dst, port, &policy_id) == KM_AUTHZ_DENIED;
}

static __always_inline int connect_deny(void)
{
	if (km_have_set_retval)
		bpf_set_retval(-KM_EACCES);
	return 0;
}

/* For outlier detection: sockops credits the outcome of the connect to
 * the backend chosen (lb_connect_failed/_succeeded). */
static __always_inline void connect_remember_lb(struct bpf_sock_addr *ctx, const struct lb_result *res)
{
	struct sock_lb *sl;

	if (!(res->svc_flags & KM_LB_OUTLIER))
		return;
	sl = bpf_sk_storage_get(&km_sock_lb, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!sl)
		return;
	sl->service_id = res->service_id;
	sl->backend_id = res->backend_id;
}

static __always_inline void connect_remember(struct bpf_sock_addr *ctx, const struct lb_request *req)
{
	struct sock_orig *orig;

	orig = bpf_sk_storage_get(&km_sock_orig, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!orig)
		return; /* getpeername shows the endpoint: cosmetic, never fatal */
	__builtin_memcpy(orig->addr, req->addr, sizeof(orig->addr));
	orig->port = req->port;
	orig->family = req->family;
}

SEC("cgroup/connect4")
int km_connect4(struct bpf_sock_addr *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	int ret;

	if (tunnel_own(ctx->sk))
		return 1;
	req.netns_cookie = bpf_get_netns_cookie(ctx);
	lb_v4_mapped(req.addr, ctx->user_ip4);
	req.port = (__u16)ctx->user_port;
	req.family = KM_FAMILY_V4;
	req.proto = (__u8)ctx->protocol;
	req.rand = bpf_get_prandom_u32();
	req.now = bpf_ktime_get_ns();
	if (ctx->sk && ctx->sk->src_ip4)
		lb_v4_mapped(req.src, ctx->sk->src_ip4);

	ret = lb_xlate(&req, &res);
	if (ret == -KM_ENOENT) {
		if (connect_denied(req.netns_cookie, req.proto, req.addr, req.port))
			return connect_deny();
		if (req.proto == IPPROTO_TCP && tunnel_wanted(req.netns_cookie, req.addr))
			return tunnel_redirect4(ctx, req.addr, req.port, 0, 0) ? connect_refuse() : 1;
		return 1;
	}
	if (ret < 0)
		return connect_refuse();
	if (connect_denied(req.netns_cookie, req.proto, res.addr, res.port))
		return connect_deny();
	connect_remember(ctx, &req);
	connect_remember_lb(ctx, &res);
	if (tunnel_wanted(req.netns_cookie, res.addr))
		return tunnel_redirect4(ctx, res.addr, res.port, req.addr, req.port) ? connect_refuse() : 1;
	/* A workload's own address reaches its waypoint only over HBONE,
	 * whose authority names it; a plaintext connection would not. */
	if (res.any_port)
		return connect_refuse();
#ifdef KM_TEST_VARIANT
	/* Test builds of an "upgraded" daemon: programs whose instructions
	 * differ, to test swapping them behind live links. */
	asm volatile("r0 = 0" ::: "r0");
#endif
	ctx->user_ip4 = res.addr[3];
	ctx->user_port = (__u32)res.port;
	return 1;
}

SEC("cgroup/connect6")
int km_connect6(struct bpf_sock_addr *ctx)
{
	struct lb_request req = {};
	struct lb_result res = {};
	int ret;

	if (tunnel_own(ctx->sk))
		return 1;
	req.netns_cookie = bpf_get_netns_cookie(ctx);
	req.addr[0] = ctx->user_ip6[0];
	req.addr[1] = ctx->user_ip6[1];
	req.addr[2] = ctx->user_ip6[2];
	req.addr[3] = ctx->user_ip6[3];
	req.port = (__u16)ctx->user_port;
	/* A dual-stack socket reaching an IPv4 service uses its IPv4-mapped
	 * address and must get an IPv4 endpoint, IPv4-mapped. */
	req.family = lb_is_v4_mapped(req.addr) ? KM_FAMILY_V4 : KM_FAMILY_V6;
	req.proto = (__u8)ctx->protocol;
	req.rand = bpf_get_prandom_u32();
	req.now = bpf_ktime_get_ns();
	if (ctx->sk) {
		req.src[0] = ctx->sk->src_ip6[0];
		req.src[1] = ctx->sk->src_ip6[1];
		req.src[2] = ctx->sk->src_ip6[2];
		req.src[3] = ctx->sk->src_ip6[3];
	}

	ret = lb_xlate(&req, &res);
	if (ret == -KM_ENOENT) {
		if (connect_denied(req.netns_cookie, req.proto, req.addr, req.port))
			return connect_deny();
		if (req.proto == IPPROTO_TCP && tunnel_wanted(req.netns_cookie, req.addr))
			return tunnel_redirect6(ctx, req.addr, req.port, req.family, 0, 0) ? connect_refuse() : 1;
		return 1;
	}
	if (ret < 0)
		return connect_refuse();
	if (connect_denied(req.netns_cookie, req.proto, res.addr, res.port))
		return connect_deny();
	connect_remember(ctx, &req);
	connect_remember_lb(ctx, &res);
	if (tunnel_wanted(req.netns_cookie, res.addr))
		return tunnel_redirect6(ctx, res.addr, res.port, req.family, req.addr, req.port) ? connect_refuse() : 1;
	if (res.any_port)
		return connect_refuse();
	ctx->user_ip6[0] = res.addr[0];
	ctx->user_ip6[1] = res.addr[1];
	ctx->user_ip6[2] = res.addr[2];
	ctx->user_ip6[3] = res.addr[3];
	ctx->user_port = (__u32)res.port;
	return 1;
}

SEC("cgroup/getpeername4")
int km_getpeername4(struct bpf_sock_addr *ctx)
{
	struct sock_orig *orig;

	orig = bpf_sk_storage_get(&km_sock_orig, ctx->sk, 0, 0);
	if (!orig) {
		struct tunnel_dst tun;

		if (tunnel_peer(ctx->sk, &tun) && tun.family == KM_FAMILY_V4) {
			ctx->user_ip4 = tun.addr[3];
			ctx->user_port = (__u32)tun.port;
		}
		return 1;
	}
	if (orig->family != KM_FAMILY_V4)
		return 1;
	ctx->user_ip4 = orig->addr[3];
	ctx->user_port = (__u32)orig->port;
	return 1;
}

SEC("cgroup/getpeername6")
int km_getpeername6(struct bpf_sock_addr *ctx)
{
	struct sock_orig *orig;

	orig = bpf_sk_storage_get(&km_sock_orig, ctx->sk, 0, 0);
	if (!orig) {
		struct tunnel_dst tun;

		if (tunnel_peer(ctx->sk, &tun)) {
			ctx->user_ip6[0] = tun.addr[0];
			ctx->user_ip6[1] = tun.addr[1];
			ctx->user_ip6[2] = tun.addr[2];
			ctx->user_ip6[3] = tun.addr[3];
			ctx->user_port = (__u32)tun.port;
		}
		return 1;
	}
	ctx->user_ip6[0] = orig->addr[0];
	ctx->user_ip6[1] = orig->addr[1];
	ctx->user_ip6[2] = orig->addr[2];
	ctx->user_ip6[3] = orig->addr[3];
	ctx->user_port = (__u32)orig->port;
	return 1;
}
