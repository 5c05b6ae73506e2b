/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map definitions shared by the programs. max_entries here are placeholders:
 * the loader sets every size at load time from the daemon's flags, so no
 * limit is repeated in Go.
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
	__type(key, struct frontend_key);
	__type(value, struct frontend_value);
	__uint(max_entries, 1);
} km_frontend SEC(".maps");

/* Service id -> slot counts, mode, live generation. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32);
	__type(value, struct service_value);
	__uint(max_entries, 1);
} km_service SEC(".maps");

/* (service, family, gen, slot) -> backend id. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
	__uint(max_entries, 1);
} km_endpoint SEC(".maps");

/* Backend id -> addresses. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
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
