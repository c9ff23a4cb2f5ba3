/* SPDX-License-Identifier: MIT */
/*
 * What the sockmap echo program (sockmap_echo.bpf.c) and the engine
 * (sockmap.c) share: the per-connection record and the per-CPU counters.
 * Included by both the BPF program and user space: kernel UAPI types only.
 */
#ifndef REBOUND_SOCKMAP_ECHO_H
#define REBOUND_SOCKMAP_ECHO_H

#include <linux/types.h>

/* A connection, keyed by its socket cookie (SO_COOKIE) in the conns hash.
 * Written by the program (under the socket's lock), read by the worker. */
struct rb_sm_conn {
	__u64 in;  /* bytes that reached the verdict (echoed, dropped or discarded) */
	__u64 out; /* bytes redirected to the socket's egress */
	__u32 flags;
	__u32 pad;
};

/* The connection's unsent echo passed the cap: from then on its input is
 * dropped and the worker resets it (there is no way to pause the kernel's
 * redirect, see docs/sockmap.md). */
#define RB_SM_OVERFLOW 1u

/* Counters, one slot per CPU (a per-CPU array of one element). */
struct rb_sm_stats {
	__u64 bytes_in;    /* echoed input: redirected, or dropped by an overflow */
	__u64 bytes_out;   /* redirected to egress */
	__u64 discarded;   /* input dropped while stopping */
	__u64 overflowed;  /* input dropped after an overflow */
	__u64 peak;        /* most unsent echo one connection had (a maximum) */
	__u64 lost_events; /* overflow notices the ring buffer had no room for */
	__u64 strays;      /* input on a socket with no record (never expected) */
};

/* What the ring buffer carries: the cookie of a connection that overflowed. */
struct rb_sm_event {
	__u64 cookie;
};

#endif
