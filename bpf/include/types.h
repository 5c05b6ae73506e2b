/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Every key, value and event struct the programs share with userspace.
 * This file is the single source of truth: bpf2go generates the Go twins
 * (KmeshFrontendKey, ...) from the BTF of these definitions. Padding is
 * explicit and each size is asserted, so a layout change is never silent.
 * A map whose layout changes must get a new name (km_backend_v2), so an
 * upgraded daemon never misreads an old pin.
 */
#ifndef KMESH_TYPES_H
#define KMESH_TYPES_H

/* Address families as the maps record them (not AF_*, to index arrays). */
enum km_family {
	KM_FAMILY_V4 = 0,
	KM_FAMILY_V6 = 1,
	KM_FAMILY_COUNT = 2,
};

/* Load-balancing modes; model.LBMode names them in Go. */
enum km_lb_mode {
	KM_LB_RANDOM = 0,
	KM_LB_ROUND_ROBIN = 1,
	KM_LB_MAGLEV = 2, /* consistent hash of the client address (km_maglev) */
};

/* What else a service asks of the balancer (service_value.flags). A
 * service with none of them is balanced as before, with no extra lookup. */
enum km_lb_flag {
	KM_LB_LOCALITY = 1 << 0, /* slots per (client class, priority): km_lb_prio */
	KM_LB_STRICT = 1 << 1,   /* with LOCALITY: only priority 0 exists; none refuses */
	KM_LB_AFFINITY = 1 << 2, /* ClientIP session affinity: km_lb_affinity */
	KM_LB_OUTLIER = 1 << 3,  /* passive outlier detection: km_lb_backend */
};

/* Limits of the locality tables, fixed by the layout. */
enum km_lb_limit {
	KM_LB_PRIORITIES = 8,   /* priorities per client class (0 = closest) */
	KM_LB_PROBES = 16,      /* slots tried past an ejected backend */
	KM_LB_EJECT_SLOTS = 16, /* backends of one service ejected at once, at most */
};

/* Backend flags: which address families the backend has. */
enum km_backend_flag {
	KM_BACKEND_HAS_V4 = 1 << 0,
	KM_BACKEND_HAS_V6 = 1 << 1,
};

/* Key of km_manage: a network namespace this kmeshd enrolled. */
struct manage_key {
	__u64 netns_cookie;
};
struct manage_value {
	__u32 flags; /* reserved, 0 */
};

/*
 * Key of km_frontend: a service address and port. IPv4 addresses are
 * stored IPv4-mapped (::ffff:a.b.c.d), so v4 and v4-mapped v6 sockets find
 * the same entry. Address and port are in network byte order.
 */
/* Port of the frontend that takes every port of its address: a workload's
 * own address that goes through its waypoint (target port 0 keeps the port
 * dialed). Only looked up when the address has no frontend of the port. */
#define KM_ANY_PORT 0

struct frontend_key {
	__u32 addr[4];
	__u16 port;
	__u8 proto; /* IPPROTO_TCP */
	__u8 pad;
};
struct frontend_value {
	__u32 service_id;
	__u16 target_port; /* network byte order */
	__u16 pad;
};

/*
 * Value of km_service, keyed by service id. Endpoint slots exist per
 * family in two generations; gen names the live one, so an update writes
 * the other generation and then flips gen with one map update: a
 * concurrent connect() sees the old or the new endpoint set, never a mix.
 */
struct service_value {
	__u32 slots[KM_FAMILY_COUNT]; /* live slot count per family */
	__u8 lb_mode;                 /* enum km_lb_mode */
	__u8 gen;                     /* live generation: 0 or 1 */
	__u16 flags;                  /* enum km_lb_flag; 0 in older daemons' entries */
};

/*
 * Key of km_endpoint. Slots of one (service, family, gen) are dense from 0,
 * so a random pick is one lookup. An endpoint of weight w fills w slots
 * (after dividing all weights of the service by their common divisor).
 */
struct endpoint_key {
	__u32 service_id;
	__u8 family; /* enum km_family */
	__u8 gen;
	__u16 group; /* 0: the service's one table; with KM_LB_LOCALITY,
		      * 1 + class * KM_LB_PRIORITIES + priority */
	__u32 slot;
};
struct endpoint_value {
	__u32 backend_id;
};

/*
 * Locality, affinity, health (include/lb.h). Closeness is measured from the
 * client: every enrolled namespace has a client class (km_lb_client), one
 * per distinct locality among this node's workloads, usually just one. For
 * a service with KM_LB_LOCALITY, each (class, priority) has its own dense
 * slot table in km_endpoint, and km_lb_prio counts them, so the closest
 * non-empty priority is found with one lookup and at most 8 reads.
 */

/* Key of km_lb_prio. */
struct lb_prio_key {
	__u32 service_id;
	__u8 family;
	__u8 gen;
	__u16 client_class;
};
/* Slots per priority for one client class; 0 is the closest. */
struct lb_prio {
	__u32 slots[KM_LB_PRIORITIES];
};

/* Value of km_lb_client, keyed by the netns cookie of an enrolled workload. */
struct lb_client {
	__u32 addr[4];      /* the workload's address (IPv4-mapped); zero if none */
	__u16 client_class; /* 0: locality unknown */
	__u16 pad;
};

/* Value of km_lb_conf, keyed by service id: the settings its flags use. */
struct lb_conf {
	__u32 affinity_timeout_s;
	__u32 base_ejection_ms;
	__u16 consecutive_failures;
	__u8 max_ejection_pct;
	__u8 pad;
	__u32 backends; /* endpoints of the service, for the ejection floor */
};

/* Key of km_lb_affinity (LRU): a client of a service. */
struct lb_affinity_key {
	__u32 service_id;
	__u8 family;
	__u8 pad[3];
	__u32 client[4]; /* bound source address, else the workload's, else the netns cookie */
};
struct lb_affinity {
	__u64 last_ns; /* the client's last new connection (kube-proxy's "recent") */
	__u32 backend_id;
	__u32 pad;
};

/* Key of km_lb_backend: a backend of a service with affinity or outlier
 * detection. The entry exists while the backend serves the service;
 * userspace creates and deletes it, the kernel updates it in place. */
struct lb_backend_key {
	__u32 service_id;
	__u32 backend_id;
};
struct lb_backend {
	__u64 ejected_until_ns; /* bpf_ktime_get_ns() clock; 0: never ejected */
	__u32 failures;         /* consecutive failed connects */
	__u16 ejections;        /* times ejected in a row: the ejection multiplier */
	__u16 pad;
};

/* Value of km_lb_eject, an array by service id: the service's current
 * ejections (their end times), for the max-ejection floor, and a count of
 * all ejections for the metrics. */
struct lb_eject {
	__u64 until[KM_LB_EJECT_SLOTS];
	__u64 total;
};

/* Socket storage km_sock_lb: what a connect of a service with outlier
 * detection chose, so sockops can credit the outcome to the backend. */
struct sock_lb {
	__u32 service_id;
	__u32 backend_id;
};

/* Value of km_backend, keyed by backend id: one workload's addresses. */
struct backend_value {
	__u32 addr4;    /* network byte order, valid with KM_BACKEND_HAS_V4 */
	__u32 addr6[4]; /* network byte order, valid with KM_BACKEND_HAS_V6 */
	__u32 flags;    /* enum km_backend_flag */
};

/*
 * Socket storage km_sock_orig: the service address a socket connected to,
 * so getpeername() shows it instead of the chosen endpoint.
 */
struct sock_orig {
	__u32 addr[4]; /* as in frontend_key */
	__u16 port;
	__u8 family; /* enum km_family of the service address */
	__u8 pad;
};

/* Kinds of connection records sent to userspace (struct conn_event). */
enum km_conn_event_type {
	KM_CONN_OPEN = 1,
	KM_CONN_CLOSE = 2,
};

/* Which end of the connection the record describes. */
enum km_conn_direction {
	KM_CONN_OUTBOUND = 0, /* this socket connected: the client side */
	KM_CONN_INBOUND = 1,  /* this socket was accepted: the server side */
};

/*
 * Key of km_tcp_stats, Istio's TCP counters kept in the kernel: what decides
 * a connection's labels, from one end's side, without what differs between
 * connections of the same two workloads (the client's port). Userspace
 * names the workloads and the service at scrape time. Addresses as in
 * frontend_key (network order, IPv4-mapped); ports in host order.
 */
struct tcp_stats_key {
	__u32 local_addr[4];
	__u32 remote_addr[4];
	__u32 service_addr[4]; /* the service address dialed (client side); zero if none */
	__u16 service_port;
	__u16 server_port; /* the destination's port: remote when outbound, local when inbound */
	__u8 direction;    /* enum km_conn_direction */
	__u8 pad[3];
};

/* Value of km_tcp_stats (per CPU): connections and payload bytes, in the
 * socket's own sense (sent: acknowledged by the peer). */
struct tcp_stats_value {
	__u64 opened;
	__u64 closed;
	__u64 bytes_sent;
	__u64 bytes_received;
};

/*
 * Socket storage km_sock_conn2: what the telemetry keeps per connection of
 * an enrolled workload from establishment to close. The bytes already added
 * to km_tcp_stats (by km_conn_iter, while the connection lives) are
 * remembered so the close adds only the rest.
 */
struct sock_conn {
	__u64 start_ns; /* bpf_ktime_get_ns() at establishment */
	__u64 reported_sent;
	__u64 reported_received;
	struct tcp_stats_key stats; /* its counters in km_tcp_stats */
};

/*
 * One live connection as km_conn_iter writes it for userspace (/connections),
 * read from the kernel's socket storage: no per-connection record crosses to
 * userspace unless someone asks.
 */
struct conn_row {
	__u64 socket_cookie;
	__u64 start_ns;
	__u64 bytes_sent;     /* payload acknowledged by the peer so far */
	__u64 bytes_received; /* payload from the peer so far */
	struct tcp_stats_key key;
	__u16 local_port;
	__u16 remote_port;
	__u8 state; /* TCP state (BPF_TCP_*) */
	__u8 pad[3];
};

/*
 * Key of km_socks, the sockhash of enrolled sockets for same-node
 * acceleration, and of km_redir_bytes: a connection's 4-tuple from the
 * socket's side, and the network namespace when the 4-tuple alone does not
 * name one connection on the node (sock_key_scope in sock.h says when).
 * Addresses as in frontend_key (IPv4-mapped), ports in host order.
 */
struct sock_key {
	__u64 netns_cookie; /* 0: the 4-tuple is the node's only one */
	__u32 local_addr[4];
	__u32 remote_addr[4];
	__u16 local_port;
	__u16 remote_port;
	__u32 pad;
};

/*
 * A record in the km_events ring buffer: a connection of an enrolled
 * workload opened or closed. Addresses as in frontend_key (network order,
 * IPv4-mapped); ports in host order.
 */
struct conn_event {
	__u64 socket_cookie; /* names the connection across its records */
	__u64 netns_cookie;
	__u64 start_ns;
	__u64 end_ns; /* close records */
	__u64 bytes_sent;     /* payload acknowledged by the peer (close records) */
	__u64 bytes_received; /* payload from the peer (close records) */
	__u32 local_addr[4];
	__u32 remote_addr[4];
	__u32 service_addr[4]; /* the service address dialed; zero if none */
	__u16 local_port;
	__u16 remote_port;
	__u16 service_port;
	__u8 type;      /* enum km_conn_event_type */
	__u8 direction; /* enum km_conn_direction */
	__u32 total_retrans;
	__u32 srtt_us; /* smoothed round-trip time */
	__u32 old_state; /* TCP state the socket closed from (close records) */
	__u32 pad;
};

/*
 * Authorization (include/authz.h). Istio's L4 AuthorizationPolicy, compiled
 * by internal/dataplane into tables the kernel walks without string work:
 * each match of a policy becomes one entry of km_authz_match, and what it
 * tests becomes table lookups (identities and ports in km_authz_val, IP
 * blocks in the km_authz_ip trie), all under the policy's id and
 * generation. A policy changes by writing the other generation and then
 * flipping its km_authz_pol entry, as services do.
 */

/* What a policy does when it matches. */
enum km_authz_action {
	KM_AUTHZ_ALLOW = 0,
	KM_AUTHZ_DENY = 1,
	KM_AUTHZ_COUNT = 2, /* AUDIT, or a dry run: counted, never enforced */
	KM_AUTHZ_ACTIONS = 3,
};

/* The outcome of a check. */
enum km_authz_verdict {
	KM_AUTHZ_PASS = 0,    /* the destination is no workload of the mesh */
	KM_AUTHZ_ALLOWED = 1,
	KM_AUTHZ_DENIED = 2,
};

/* Which end of the connection checked it. */
enum km_authz_side {
	KM_AUTHZ_SOURCE = 0,      /* the client's node, in connect() */
	KM_AUTHZ_DESTINATION = 1, /* the server's node, on the SYN */
	KM_AUTHZ_SIDES = 2,
};

/* Flags of struct authz_match. A clause is a run of entries from one with
 * CLAUSE_START to one with CLAUSE_END; a rule ends with RULE_END. An entry
 * with no test flag matches every connection (a rule without clauses). */
enum km_authz_match_flag {
	KM_AUTHZ_CLAUSE_START = 1 << 0,
	KM_AUTHZ_CLAUSE_END = 1 << 1,
	KM_AUTHZ_RULE_END = 1 << 2,
	KM_AUTHZ_IDENTITY = 1 << 3,     /* the source identity must be in km_authz_val */
	KM_AUTHZ_IDENTITY_NOT = 1 << 4, /* ... must not be (the complement is smaller) */
	KM_AUTHZ_SRC_IP = 1 << 5,       /* the source address's label in km_authz_ip */
	KM_AUTHZ_DST_IP = 1 << 6,       /* the destination address's label */
	KM_AUTHZ_PORT = 1 << 7,         /* the destination port's label in km_authz_val */
	KM_AUTHZ_PORT_DEFAULT = 1 << 8, /* label of a port km_authz_val lacks */
};

/* What a km_authz_val or km_authz_ip entry is about. */
enum km_authz_kind {
	KM_AUTHZ_KIND_IDENTITY = 1,
	KM_AUTHZ_KIND_PORT = 2,
	KM_AUTHZ_KIND_SRC_IP = 3,
	KM_AUTHZ_KIND_DST_IP = 4,
};

/* A list of policy ids in km_authz_list: n[KM_AUTHZ_DENY] entries first,
 * then the ALLOW ones, then those only counted. Lists never change: a new
 * set of policies is a new list, and the references move to it. */
struct authz_list_ref {
	__u32 id; /* 0: no list */
	__u16 n[KM_AUTHZ_ACTIONS];
	__u16 pad;
};

/* Key of km_authz_addr: a workload's address, as in frontend_key. */
struct authz_addr_key {
	__u32 addr[4];
};

/* Value of km_authz_addr: who is at the address, as a source, and which
 * policies protect it, as a destination (besides the global ones in
 * km_authz_glob). */
struct authz_peer {
	__u64 identity; /* hash of the SPIFFE id; 0: none */
	struct authz_list_ref lists[2]; /* namespace, workload-selector policies */
};

/* Key of km_authz_list: one entry of a list; the value is a policy id. */
struct authz_list_key {
	__u32 id;
	__u32 index;
};

/* Value of km_authz_pol, keyed by policy id (1.. --max-policies). */
struct authz_policy {
	__u8 action; /* enum km_authz_action */
	__u8 gen;    /* live generation of its matches */
	__u16 pad;
	__u32 matches; /* entries of km_authz_match in that generation */
};

/* Key of km_authz_match: entry index of a policy's generation. */
struct authz_match_key {
	__u32 policy_id;
	__u16 index;
	__u8 gen;
	__u8 pad;
};
struct authz_match {
	__u16 flags;     /* enum km_authz_match_flag */
	__u16 next_rule; /* index of the next rule's first entry */
};

/* Key of km_authz_val: an identity hash or a port (host order) a match
 * tests; the value is the label: 1 matches, 0 does not. */
struct authz_val_key {
	__u32 policy_id;
	__u16 index;
	__u8 gen;
	__u8 kind; /* enum km_authz_kind */
	__u64 value;
};

/* Key of km_authz_ip, an LPM trie: a match's address block (addresses as
 * in frontend_key; prefixlen counts the 64 bits before addr). Every match
 * that tests an address has a /0 entry (prefixlen 64) with the label of an
 * address in none of its blocks. */
struct authz_ip_key {
	__u32 prefixlen;
	__u32 policy_id;
	__u16 index;
	__u8 gen;
	__u8 kind; /* KM_AUTHZ_KIND_SRC_IP or _DST_IP */
	__u32 addr[4];
};

/* Value of km_authz_netns, keyed by the netns cookie of an enrolled
 * workload: who its sockets are at connect(), before they have an address. */
struct authz_self {
	__u64 identity;
	__u32 addr4;    /* network order, valid with KM_BACKEND_HAS_V4 */
	__u32 addr6[4]; /* network order, valid with KM_BACKEND_HAS_V6 */
	__u32 flags;    /* enum km_backend_flag */
};

/* Value of km_authz_stats, per CPU, indexed by policy id; index 0 counts
 * decisions no policy made. Each array is indexed by enum km_authz_side. */
struct authz_stat {
	__u64 allowed[KM_AUTHZ_SIDES];
	__u64 denied[KM_AUTHZ_SIDES];
	__u64 matched[KM_AUTHZ_SIDES]; /* a counted (AUDIT, dry-run) policy matched */
};

/*
 * HBONE tunnel (include/tunnel.h). A connection of an enrolled workload to
 * a workload on another node that speaks HBONE is redirected to the tunnel
 * listener in the client's own network namespace (loopback, port
 * KM_TUNNEL_OUTBOUND_PORT); the tunnel process finds where it was going by
 * the client socket's address and port, and carries it over mutual TLS.
 */
enum km_tunnel_const {
	KM_TUNNEL_OUTBOUND_PORT = 15001, /* the tunnel's loopback listener in each pod */
	KM_TUNNEL_HBONE_PORT = 15008,    /* HBONE on the destination pod */
	KM_TUNNEL_MARK = 0x539,          /* SO_MARK of the tunnel's sockets, as ztunnel's */
};

/* How connections to a workload address are carried (km_tunnel). */
enum km_tunnel_proto {
	KM_TUNNEL_NONE = 0,
	KM_TUNNEL_HBONE = 1,
};

/* Value of km_tunnel, keyed by authz_addr_key: a workload address of
 * another node that takes HBONE. */
struct tunnel_value {
	__u32 proto; /* enum km_tunnel_proto */
};

/* Key of km_tunnel_dst: a redirected client socket as the tunnel's
 * accepted socket sees its peer. Address as in frontend_key. */
struct tunnel_key {
	__u64 netns_cookie;
	__u32 addr[4];
	__u16 port; /* host order */
	__u16 pad[3];
};

/* Where a redirected connection was going: the chosen endpoint (socket
 * storage km_tunnel_sk, then km_tunnel_dst), and the service address the
 * client dialed when the kernel balanced it (the CONNECT authority a
 * waypoint needs, as ztunnel sends VIP:port). With outlier detection on
 * the service, also the backend chosen: the connect to the tunnel always
 * succeeds, so the tunnel credits the outcome of its HBONE connect instead
 * (km_lb_outcome). */
struct tunnel_dst {
	__u32 addr[4];     /* as in frontend_key */
	__u16 port;        /* network order */
	__u8 family;       /* enum km_family the socket spoke */
	__u8 has_svc;      /* 1: svc_addr/svc_port hold the service dialed */
	__u32 svc_addr[4]; /* as in frontend_key */
	__u16 svc_port;    /* network order */
	__u8 has_lb;       /* 1: lb holds the backend outlier detection watches */
	__u8 pad;
	struct sock_lb lb;
};

/* Context of km_lb_outcome: one connect's outcome for outlier detection,
 * run by the tunnel through BPF_PROG_RUN. */
struct lb_outcome {
	__u32 service_id;
	__u32 backend_id;
	__u32 ok; /* 1: connected, 0: failed */
};

_Static_assert(sizeof(struct tunnel_value) == 4, "tunnel_value size");
_Static_assert(sizeof(struct tunnel_key) == 32, "tunnel_key size");
_Static_assert(sizeof(struct tunnel_dst) == 48, "tunnel_dst size");
_Static_assert(sizeof(struct lb_outcome) == 12, "lb_outcome size");
_Static_assert(sizeof(struct lb_prio_key) == 8, "lb_prio_key size");
_Static_assert(sizeof(struct lb_prio) == 32, "lb_prio size");
_Static_assert(sizeof(struct lb_client) == 20, "lb_client size");
_Static_assert(sizeof(struct lb_conf) == 16, "lb_conf size");
_Static_assert(sizeof(struct lb_affinity_key) == 24, "lb_affinity_key size");
_Static_assert(sizeof(struct lb_affinity) == 16, "lb_affinity size");
_Static_assert(sizeof(struct lb_backend_key) == 8, "lb_backend_key size");
_Static_assert(sizeof(struct lb_backend) == 16, "lb_backend size");
_Static_assert(sizeof(struct lb_eject) == 136, "lb_eject size");
_Static_assert(sizeof(struct sock_lb) == 8, "sock_lb size");
_Static_assert(sizeof(struct authz_list_ref) == 12, "authz_list_ref size");
_Static_assert(sizeof(struct authz_addr_key) == 16, "authz_addr_key size");
_Static_assert(sizeof(struct authz_peer) == 32, "authz_peer size");
_Static_assert(sizeof(struct authz_list_key) == 8, "authz_list_key size");
_Static_assert(sizeof(struct authz_policy) == 8, "authz_policy size");
_Static_assert(sizeof(struct authz_match_key) == 8, "authz_match_key size");
_Static_assert(sizeof(struct authz_match) == 4, "authz_match size");
_Static_assert(sizeof(struct authz_val_key) == 16, "authz_val_key size");
_Static_assert(sizeof(struct authz_ip_key) == 28, "authz_ip_key size");
_Static_assert(sizeof(struct authz_self) == 32, "authz_self size");
_Static_assert(sizeof(struct authz_stat) == 48, "authz_stat size");
_Static_assert(sizeof(struct tcp_stats_key) == 56, "tcp_stats_key size");
_Static_assert(sizeof(struct tcp_stats_value) == 32, "tcp_stats_value size");
_Static_assert(sizeof(struct sock_conn) == 80, "sock_conn size");
_Static_assert(sizeof(struct conn_row) == 96, "conn_row size");
_Static_assert(sizeof(struct sock_key) == 48, "sock_key size");
_Static_assert(sizeof(struct conn_event) == 120, "conn_event size");
_Static_assert(sizeof(struct manage_key) == 8, "manage_key size");
_Static_assert(sizeof(struct manage_value) == 4, "manage_value size");
_Static_assert(sizeof(struct frontend_key) == 20, "frontend_key size");
_Static_assert(sizeof(struct frontend_value) == 8, "frontend_value size");
_Static_assert(sizeof(struct service_value) == 12, "service_value size");
_Static_assert(sizeof(struct endpoint_key) == 12, "endpoint_key size");
_Static_assert(sizeof(struct endpoint_value) == 4, "endpoint_value size");
_Static_assert(sizeof(struct backend_value) == 24, "backend_value size");
_Static_assert(sizeof(struct sock_orig) == 20, "sock_orig size");

#endif
