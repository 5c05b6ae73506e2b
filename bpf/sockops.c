// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connection telemetry. Istio's TCP counters (connections opened and
 * closed, bytes each way) are kept here, per CPU, in km_tcp_stats, keyed by
 * what decides their labels; userspace reads them when it is scraped.
 * km_conn_iter walks the live connections' socket storage: it adds the bytes
 * of long-lived connections to the counters as they flow, and lists the
 * connections with their bytes and state (/connections). Only while the
 * access log is on does a record per closed connection (bytes, retransmits,
 * smoothed RTT, the state it closed from) go to userspace through the
 * km_events ring buffer. A record the ring buffer has no room for is counted
 * in km_events_lost, a connection km_tcp_stats has no room for in
 * km_tcp_full: never dropped silently. Compiled as part of kmesh.c.
 */

/* Istio's TCP counters: 65,536 keys (pairs of workloads, services); a
 * connection with no room is counted in km_tcp_full. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct tcp_stats_key);
	__type(value, struct tcp_stats_value);
	__uint(max_entries, 65536);
} km_tcp_stats SEC(".maps");

/* Connections not counted because km_tcp_stats was full, per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, 1);
} km_tcp_full SEC(".maps");

/* Set by userspace at run time: 1 while it wants a record per closed
 * connection (the access log is on). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} km_records SEC(".maps");

/* Connection records for userspace (1 MiB). */
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
	ev->direction = conn->stats.direction;
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

/* The counters of key, created at the first connection; NULL (and counted
 * in km_tcp_full) when the map has no room. */
static __always_inline struct tcp_stats_value *sockops_stats(const struct tcp_stats_key *key, int create)
{
	struct tcp_stats_value *v = bpf_map_lookup_elem(&km_tcp_stats, key);
	struct tcp_stats_value zero = {};
	__u32 idx = 0;
	__u64 *full;

	if (v || !create)
		return v;
	bpf_map_update_elem(&km_tcp_stats, key, &zero, BPF_NOEXIST);
	v = bpf_map_lookup_elem(&km_tcp_stats, key);
	if (!v) {
		full = bpf_map_lookup_elem(&km_tcp_full, &idx);
		if (full)
			*full += 1; /* per CPU: no other writer */
	}
	return v;
}

/* Adds to v the bytes of a connection beyond what was already added, and
 * remembers the new totals: the close and km_conn_iter both report, and an
 * exchange keeps either from adding the same bytes twice. */
static __always_inline void sockops_add_bytes(struct tcp_stats_value *v, struct sock_conn *conn, __u64 sent,
					      __u64 received)
{
	__u64 old;

	old = __sync_lock_test_and_set(&conn->reported_sent, sent);
	if (sent > old)
		__sync_fetch_and_add(&v->bytes_sent, sent - old);
	old = __sync_lock_test_and_set(&conn->reported_received, received);
	if (received > old)
		__sync_fetch_and_add(&v->bytes_received, received - old);
}

/* Fills the counters' key of a connection from its socket. Read straight
 * from the context, as sockops_record does. */
static __always_inline void sockops_stats_key(struct bpf_sock_ops *skops, struct bpf_sock *sk, __u8 direction,
					      struct tcp_stats_key *key)
{
	struct sock_orig *orig;

	__builtin_memset(key, 0, sizeof(*key));
	key->direction = direction;
	sock_addrs_ops(skops, key->local_addr, key->remote_addr);
	if (direction == KM_CONN_OUTBOUND)
		key->server_port = (__u16)bpf_ntohl(skops->remote_port);
	else
		key->server_port = (__u16)skops->local_port;
	orig = bpf_sk_storage_get(&km_sock_orig, sk, 0, 0);
	if (orig) {
		__builtin_memcpy(key->service_addr, orig->addr, sizeof(key->service_addr));
		key->service_port = bpf_ntohs(orig->port);
	}
}

static __always_inline void sockops_established(struct bpf_sock_ops *skops, __u8 direction)
{
	struct manage_key mkey = { .netns_cookie = bpf_get_netns_cookie(skops) };
	struct tcp_stats_value *stats;
	struct sock_conn *conn;
	struct bpf_sock *sk = skops->sk;

	if (!sk || !bpf_map_lookup_elem(&km_manage, &mkey))
		return;
	conn = bpf_sk_storage_get(&km_sock_conn2, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!conn)
		return;
	conn->start_ns = bpf_ktime_get_ns();
	conn->reported_sent = 0;
	conn->reported_received = 0;
	sockops_stats_key(skops, sk, direction, &conn->stats);
	/* Only state changes from now on: the close is what we wait for. */
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);

	skmsg_add(skops);

	if (!km_telemetry)
		return;
	stats = sockops_stats(&conn->stats, 1);
	if (stats)
		__sync_fetch_and_add(&stats->opened, 1);
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
	struct tcp_stats_value *stats;
	struct bpf_sock *sk = skops->sk;
	struct sock_conn *conn;
	struct conn_event *ev;
	__u64 sent = 0, received = 0;
	__u32 zero = 0, *records;

	if (!sk)
		return;
	conn = bpf_sk_storage_get(&km_sock_conn2, sk, 0, 0);
	if (!conn)
		return;
	sockops_payload(skops, conn->stats.direction, &sent, &received);
	skmsg_redirected(skops, &sent, &received);
	stats = km_telemetry ? sockops_stats(&conn->stats, 1) : NULL;
	if (stats) {
		__sync_fetch_and_add(&stats->closed, 1);
		sockops_add_bytes(stats, conn, sent, received);
	}
	records = bpf_map_lookup_elem(&km_records, &zero);
	if (records && *records) {
		ev = sockops_record(skops, sk, conn, KM_CONN_CLOSE);
		if (ev) {
			ev->end_ns = bpf_ktime_get_ns();
			ev->bytes_sent = sent;
			ev->bytes_received = received;
			ev->total_retrans = skops->total_retrans;
			ev->srtt_us = skops->srtt_us >> 3; /* the kernel keeps 8x the RTT */
			ev->old_state = skops->args[0];
			sockops_submit(ev);
		}
	}
	bpf_sk_storage_delete(&km_sock_conn2, sk);
}

/*
 * Run by userspace (a bpf_iter over the TCP sockets of one network
 * namespace, the one the reader is in when it opens the iterator): for each
 * live connection of an enrolled workload (a socket with km_sock_conn2
 * storage), adds the bytes it moved since the last run to km_tcp_stats
 * (long-lived connections show traffic before they close, as Istio reports
 * them) and writes a conn_row. Payload as sockops_payload counts it, from
 * the state the socket is in; bytes moved socket to socket by acceleration
 * are added at the close.
 */
SEC("iter/tcp")
int km_conn_iter(struct bpf_iter__tcp *ctx)
{
	struct sock_common *skc = ctx->sk_common;
	struct tcp_stats_value *stats;
	struct conn_row row = {};
	struct sock_conn *conn;
	struct tcp_sock *tp;
	__u64 acked, in;
	__u8 state;

	if (!skc)
		return 0;
	tp = bpf_skc_to_tcp_sock(skc);
	if (!tp)
		return 0;
	conn = bpf_sk_storage_get(&km_sock_conn2, tp, 0, 0);
	if (!conn)
		return 0;
	state = skc->skc_state;
	acked = tp->bytes_acked;
	in = tp->bytes_received;
	if (conn->stats.direction == KM_CONN_OUTBOUND && acked > 0)
		acked -= 1; /* our SYN */
	if (state == BPF_TCP_FIN_WAIT2 && acked > 0)
		acked -= 1; /* our FIN, acknowledged */
	if ((state == BPF_TCP_CLOSE_WAIT || state == BPF_TCP_LAST_ACK || state == BPF_TCP_CLOSING) && in > 0)
		in -= 1; /* the peer's FIN */
	if (km_telemetry) {
		stats = sockops_stats(&conn->stats, 0);
		if (stats)
			sockops_add_bytes(stats, conn, acked, in);
	}
	row.socket_cookie = bpf_get_socket_cookie(tp);
	row.start_ns = conn->start_ns;
	row.bytes_sent = acked;
	row.bytes_received = in;
	__builtin_memcpy(&row.key, &conn->stats, sizeof(row.key));
	row.local_port = skc->skc_num;
	row.remote_port = bpf_ntohs(skc->skc_dport);
	row.state = state;
	bpf_seq_write(ctx->meta->seq, &row, sizeof(row));
	return 0;
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

/*
 * The same credit for a connection the tunnel carried: its application
 * socket connected to the tunnel, so tunnel_connecting handed the backend
 * to the tunnel, which runs this (BPF_PROG_RUN) once its HBONE connect has
 * an answer. One implementation of the ejection rules for both paths.
 */
SEC("syscall")
int km_lb_outcome(struct lb_outcome *o)
{
	if (o->ok)
		lb_connect_succeeded(o->service_id, o->backend_id, bpf_ktime_get_ns());
	else
		lb_connect_failed(o->service_id, o->backend_id, bpf_ktime_get_ns());
	return 0;
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
	if (tunnel_own(skops->sk)) {
		/* The tunnel counts its connections; its dial into an
		 * application tells which accepted socket is that dial's. */
		if (skops->op == BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB)
			tunnel_leg_dialed(skops);
		return 1;
	}
	switch (skops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		tunnel_connecting(skops); /* first: takes a tunnelled socket's backend */
		sockops_lb_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		sockops_lb_outcome(skops, 1);
		if (!tunnel_redirected(skops->sk))
			sockops_established(skops, KM_CONN_OUTBOUND);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		if (!tunnel_leg_accepted(skops))
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
