/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map definitions shared by the programs. max_entries here are placeholders:
 * the loader sets every size at load time from the daemon's flags, so no
 * limit is repeated in Go.
 *
 * The hash maps sized by the mesh (--max-*) are not preallocated
 * (BPF_F_NO_PREALLOC): the kernel would otherwise build every entry's free
 * slot when the map is created, 0.4 s of CPU at the limits of 100,000
 * endpoints and 1.1 s at 500,000, at each start that creates them, for
 * entries most meshes never use. An entry is allocated when written
 * instead (~0.3 us more per write, measured on batch writes; one change's
 * writes cost the same). LRU maps cannot be. The flag is part of the
 * map's spec: a pin created with other flags is not reused, and the service
 * tables are created anew as one set (internal/bpf openMaps), as for a
 * size change.
 */
#ifndef KMESH_MAPS_H
#define KMESH_MAPS_H

#include "types.h"

/* Network namespaces whose sockets this kmeshd balances. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct manage_key);
	__type(value, struct manage_value);
	__uint(max_entries, 1);
} km_manage SEC(".maps");

/* Service address:port -> service. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct frontend_key);
	__type(value, struct frontend_value);
	__uint(max_entries, 1);
} km_frontend SEC(".maps");

/* Service id -> slot counts, mode, live generation. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct service_value);
	__uint(max_entries, 1);
} km_service SEC(".maps");

/* (service, family, gen, slot) -> backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, 1);
} km_endpoint SEC(".maps");

/* Backend id -> addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct backend_value);
	__uint(max_entries, 1);
} km_backend SEC(".maps");

/* Round-robin position per service id; an array so updates to km_service
 * never reset it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 1);
} km_rr SEC(".maps");

/* Locality, affinity, health (include/lb.h, types.h). */

/* (service, family, gen, client class) -> slots per priority. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_prio_key);
	__type(value, struct lb_prio);
	__uint(max_entries, 1);
} km_lb_prio SEC(".maps");

/* Netns cookie of an enrolled workload -> its address and client class. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64);
	__type(value, struct lb_client);
	__uint(max_entries, 1);
} km_lb_client SEC(".maps");

/* Service id -> affinity and outlier settings. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lb_conf);
	__uint(max_entries, 1);
} km_lb_conf SEC(".maps");

/* (service, client) -> backend and last use; the least recently used
 * entries go first when it is full, as kube-proxy's "recent" list. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct lb_affinity_key);
	__type(value, struct lb_affinity);
	__uint(max_entries, 1);
} km_lb_affinity SEC(".maps");

/* (service, backend) -> outlier state; exists while the backend serves. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lb_backend_key);
	__type(value, struct lb_backend);
	__uint(max_entries, 1);
} km_lb_backend SEC(".maps");

/* Service id -> its current ejections; reset when an id is given out. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct lb_eject);
	__uint(max_entries, 1);
} km_lb_eject SEC(".maps");

/* Maglev lookup tables: service id * 2 + family -> a table of
 * km_maglev_size backend ids. A table is replaced whole, by swapping the
 * inner map, so a connect sees the old table or the new one. */
struct km_maglev_table {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, __u32);
	__uint(max_entries, 16381);
};
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__type(key, __u32);
	__uint(max_entries, 1);
	__array(values, struct km_maglev_table);
} km_maglev SEC(".maps");

/*
 * Authorization maps (include/authz.h), written by internal/dataplane. The
 * hash maps are not preallocated: an entry replaced or deleted under a
 * reader is freed after an RCU grace period, so a connect() that found it
 * reads it whole. Userspace never changes an entry a reader may be walking:
 * it writes new entries, then moves the one reference to them.
 */

/* Workload address -> identity and the lists of policies protecting it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_addr_key);
	__type(value, struct authz_peer);
	__uint(max_entries, 1);
} km_authz_addr SEC(".maps");

/* Key 0 -> the list of global policies. A hash, not an array, so a new
 * reference replaces the old one whole. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct authz_list_ref);
	__uint(max_entries, 1);
} km_authz_glob SEC(".maps");

/* (list, index) -> policy id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_list_key);
	__type(value, __u32);
	__uint(max_entries, 1);
} km_authz_list SEC(".maps");

/* Policy id -> action, live generation, number of matches. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct authz_policy);
	__uint(max_entries, 1);
} km_authz_pol SEC(".maps");

/* (policy, generation, index) -> one match and where it sits in its rule. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_match_key);
	__type(value, struct authz_match);
	__uint(max_entries, 1);
} km_authz_match SEC(".maps");

/* (match, identity or port) -> label. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_val_key);
	__type(value, __u8);
	__uint(max_entries, 1);
} km_authz_val SEC(".maps");

/* (match, address block) -> label, longest prefix first. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct authz_ip_key);
	__type(value, __u8);
	__uint(max_entries, 1);
} km_authz_ip SEC(".maps");

/* Netns cookie of an enrolled workload -> its identity and addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u64);
	__type(value, struct authz_self);
	__uint(max_entries, 1);
} km_authz_netns SEC(".maps");

/* Policy id -> decisions it made, per CPU; read when metrics are scraped. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, struct authz_stat);
	__uint(max_entries, 1);
} km_authz_stats SEC(".maps");

#endif
