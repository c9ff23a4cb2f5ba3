/* SPDX-License-Identifier: MIT */
/*
 * Every limit on a configuration value, in one place. config.c checks a
 * configuration against them (the only validation: the CLI parses, the
 * library validates); the rest of the engine may rely on them.
 */
#ifndef REBOUND_LIMITS_H
#define REBOUND_LIMITS_H

#include "rebound/rebound.h"

#define RB_LIMIT_CHUNK_MIN              512u /* --chunk-size */
#define RB_LIMIT_CHUNK_MAX              (16u << 20)
#define RB_LIMIT_CONN_BUFFER_MAX        (1u << 30) /* --conn-buffer, from 1 byte */
#define RB_LIMIT_PIPE_MIN               4096u      /* --pipe-size */
#define RB_LIMIT_PIPE_MAX               (1u << 30)
#define RB_LIMIT_SHUTDOWN_MS_MAX        3600000u /* --shutdown-timeout, from 0 */
#define RB_LIMIT_URING_ENTRIES_MAX      32768u   /* --uring-entries, from 1 */
#define RB_LIMIT_URING_BUFFERS_MAX      32768u   /* --uring-buffers: a power of two (buffer ring) */
#define RB_LIMIT_URING_SQPOLL_MS_MAX    60000u
#define RB_LIMIT_URING_BATCH_US_MAX     60000000u   /* never stalls a flow: tests use 30 s */
#define RB_LIMIT_USER_TIMEOUT_MS_MAX    2147483647u /* TCP_USER_TIMEOUT is an int */
#define RB_LIMIT_UDP_RATE_MAX           100000000u
#define RB_LIMIT_KEEPALIVE_S_MAX        32767u /* TCP_KEEPIDLE/KEEPINTVL in the kernel */
#define RB_LIMIT_KEEPALIVE_CNT_MAX      127u   /* TCP_KEEPCNT */
#define RB_LIMIT_UNIX_MODE_MAX          0777u
#define RB_LIMIT_CONNECT_TIMEOUT_MS_MAX 3600000u  /* --connect-timeout, from 1 ms */
#define RB_LIMIT_MAX_CONNS              10000000u /* --max-conns, 0 = none */
#define RB_LIMIT_TIMEOUT_MS_MAX         86400000u /* --idle-timeout, --write-timeout: a day */
#define RB_LIMIT_STATS_INTERVAL_MIN     10u       /* --stats-interval, ms, when not 0 */
#define RB_LIMIT_BUSY_POLL_US_MAX       1000000u  /* --busy-poll, us */
/* Impairments (issue 13). */
#define RB_LIMIT_IMPAIR_MS_MAX    600000u /* --delay, jitter, --slice's D, --accept-delay: 10 min */
#define RB_LIMIT_IMPAIR_RATE_MIN  8000ull /* --rate, bits/s: 1 kB/s ... */
#define RB_LIMIT_IMPAIR_RATE_MAX  100000000000ull /* ... 100 Gbit/s */
#define RB_LIMIT_IMPAIR_SLICE_MAX (1u << 30)      /* --slice SIZE, from 1 byte */
#define RB_LIMIT_IMPAIR_MARKS     64u             /* delay marks per flow (impair.c) */
#define RB_LIMIT_IMPAIR_UDP_HELD  4096u /* delayed UDP answers per socket (udp_impair.c) */
/* The chunk pool's own bounds (iopool.c; tests use tiny chunks). */
#define RB_POOL_CHUNK_MIN 64u
#define RB_POOL_CHUNK_MAX RB_LIMIT_CHUNK_MAX

#endif
