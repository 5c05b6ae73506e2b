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

#endif
