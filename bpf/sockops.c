// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connection telemetry. For every TCP connection of an enrolled workload,
 * one record when it is established and one when it closes, with bytes
 * each way, retransmits, smoothed RTT and the state it closed from, sent to
 * userspace through the km_events ring buffer. A record the ring buffer has
 * no room for is counted in km_events_lost, never dropped silently.
 * Compiled as part of kmesh.c.
 */


/* Connection records for userspace; the loader sets the size. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} km_events SEC(".maps");

/* Records lost because km_events was full, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} km_events_lost SEC(".maps");

/* Set at load time: kmeshd --telemetry (default on). Off, no records are
 * made; sockops still serves same-node acceleration. */
volatile const bool km_telemetry = true;

/* Records are handed over without waking the reader, which polls a few
 * times a second: a wakeup per record would cost more than the record. Only
 * a filling buffer wakes it at once. */
#define KM_EVENTS_WAKEUP_BYTES (64 * 1024)

static __always_inline void sockops_submit(struct conn_event *ev)
{
	__u64 flags = BPF_RB_NO_WAKEUP;

	if (bpf_ringbuf_query(&km_events, BPF_RB_AVAIL_DATA) > KM_EVENTS_WAKEUP_BYTES)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(ev, flags);
}

static __always_inline struct conn_event *sockops_reserve(void)
{
	struct conn_event *ev = bpf_ringbuf_reserve(&km_events, sizeof(*ev), 0);
	if (!ev) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&km_events_lost, &zero);
		if (lost)
			*lost += 1; /* per CPU: no other writer */
	}
	return ev;
}

/* Reserves a record of one of sk's connection events and fills what every
 * record carries; NULL when records are off or the buffer is full. */
static __always_inline struct conn_event *sockops_record(struct bpf_sock_ops *skops, struct bpf_sock *sk,
							 const struct sock_conn *conn, __u8 type)
{
	struct sock_orig *orig;
	struct conn_event *ev;

	if (!km_telemetry)
		return NULL;
	ev = sockops_reserve();
	if (!ev)
		return NULL;
	__builtin_memset(ev, 0, sizeof(*ev));
	ev->type = type;
	ev->direction = conn->direction;
	ev->socket_cookie = bpf_get_socket_cookie(skops);
	ev->netns_cookie = bpf_get_netns_cookie(skops);
	ev->start_ns = conn->start_ns;
	/* Read straight from the context: going through sock_key_ops() here
	 * lets clang share a computed context pointer, which the verifier
	 * refuses ("dereference of modified ctx ptr"). */
	if (skops->family == 2 /* AF_INET */) {
		lb_v4_mapped(ev->local_addr, skops->local_ip4);
		lb_v4_mapped(ev->remote_addr, skops->remote_ip4);
	} else {
		ev->local_addr[0] = skops->local_ip6[0];
		ev->local_addr[1] = skops->local_ip6[1];
		ev->local_addr[2] = skops->local_ip6[2];
		ev->local_addr[3] = skops->local_ip6[3];
		ev->remote_addr[0] = skops->remote_ip6[0];
		ev->remote_addr[1] = skops->remote_ip6[1];
		ev->remote_addr[2] = skops->remote_ip6[2];
		ev->remote_addr[3] = skops->remote_ip6[3];
	}
	ev->local_port = (__u16)skops->local_port;
	ev->remote_port = (__u16)bpf_ntohl(skops->remote_port);
	orig = bpf_sk_storage_get(&km_sock_orig, sk, 0, 0);
	if (orig) {
		__builtin_memcpy(ev->service_addr, orig->addr, sizeof(ev->service_addr));
		ev->service_port = bpf_ntohs(orig->port);
	}
	return ev;
}

static __always_inline void sockops_established(struct bpf_sock_ops *skops, __u8 direction)
{
	struct manage_key mkey = { .netns_cookie = bpf_get_netns_cookie(skops) };
	struct sock_conn *conn;
	struct conn_event *ev;
	struct bpf_sock *sk = skops->sk;

	if (!sk || !bpf_map_lookup_elem(&km_manage, &mkey))
		return;
	conn = bpf_sk_storage_get(&km_sock_conn, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!conn)
		return;
	conn->start_ns = bpf_ktime_get_ns();
	conn->direction = direction;
	/* Only state changes from now on: the close is what we wait for. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);

	skmsg_add(skops);

	ev = sockops_record(skops, sk, conn, KM_CONN_OPEN);
	if (ev)
		sockops_submit(ev);
}

/*
 * TCP's byte counters count sequence numbers, and SYN and FIN take one each
 * (but an accepted socket is born after its SYN-ACK was acknowledged).
 * A record carries payload only: what an application wrote and the peer
 * acknowledged, and what the peer wrote. The state a socket closes from
 * tells which FINs went through: past FIN_WAIT2, LAST_ACK or CLOSING ours
 * was acknowledged; from CLOSE_WAIT, LAST_ACK, CLOSING or FIN_WAIT2 (whose
 * full socket closes when the peer's FIN moves it to TIME_WAIT) the peer's
 * came in. A FIN_WAIT2 that times out without the peer's FIN counts one
 * byte short.
 */
static __always_inline void sockops_payload(struct bpf_sock_ops *skops, __u8 direction, __u64 *sent,
					    __u64 *received)
{
	__u32 old = skops->args[0];
	__u64 acked = skops->bytes_acked, in = skops->bytes_received;
	int fin_out = old == BPF_TCP_FIN_WAIT2 || old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING;
	int fin_in = old == BPF_TCP_CLOSE_WAIT || old == BPF_TCP_LAST_ACK || old == BPF_TCP_CLOSING ||
		     old == BPF_TCP_FIN_WAIT2;

	/* A connecting socket counts the acknowledgement of its SYN; an
	 * accepted one starts counting after the handshake. */
	if (direction == KM_CONN_OUTBOUND && acked > 0)
		acked -= 1;
	if (fin_out && acked > 0)
		acked -= 1;
	if (fin_in && in > 0)
		in -= 1;
	*sent = acked;
	*received = in;
}

static __always_inline void sockops_closed(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_conn *conn;
	struct conn_event *ev;

	if (!sk)
		return;
	conn = bpf_sk_storage_get(&km_sock_conn, sk, 0, 0);
	if (!conn)
		return;
	ev = sockops_record(skops, sk, conn, KM_CONN_CLOSE);
	if (ev) {
		ev->end_ns = bpf_ktime_get_ns();
		sockops_payload(skops, conn->direction, &ev->bytes_sent, &ev->bytes_received);
		skmsg_redirected(skops, &ev->bytes_sent, &ev->bytes_received);
		ev->total_retrans = skops->total_retrans;
		ev->srtt_us = skops->srtt_us >> 3; /* the kernel keeps 8x the RTT */
		ev->old_state = skops->args[0];
		sockops_submit(ev);
	}
	bpf_sk_storage_delete(&km_sock_conn, sk);
}

/*
 * Outlier detection: a connect to a service with KM_LB_OUTLIER left the
 * backend it chose in km_sock_lb. Its outcome is credited once: success at
 * establishment, failure when the socket closes from SYN_SENT (a reset, a
 * timeout, or the application giving up on a connect that hangs).
 */
static __always_inline void sockops_lb_outcome(struct bpf_sock_ops *skops, int ok)
{
	struct bpf_sock *sk = skops->sk;
	struct sock_lb *sl;

	if (!sk)
		return;
	sl = bpf_sk_storage_get(&km_sock_lb, sk, 0, 0);
	if (!sl)
		return;
	if (ok)
		lb_connect_succeeded(sl->service_id, sl->backend_id, bpf_ktime_get_ns());
	else
		lb_connect_failed(sl->service_id, sl->backend_id, bpf_ktime_get_ns());
	bpf_sk_storage_delete(&km_sock_lb, sk);
}

/* Before the SYN: watch the state changes of a connect whose outcome
 * outlier detection wants. */
static __always_inline void sockops_lb_connect(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (sk && bpf_sk_storage_get(&km_sock_lb, sk, 0, 0))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

SEC("sockops")
int km_sockops(struct bpf_sock_ops *skops)
{
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		sockops_lb_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sockops_lb_outcome(skops, 1);
		sockops_established(skops, KM_CONN_OUTBOUND);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		sockops_established(skops, KM_CONN_INBOUND);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			if (skops->args[0] == BPF_TCP_SYN_SENT)
				sockops_lb_outcome(skops, 0);
			sockops_closed(skops);
		}
		break;
	}
	return 1;
}
