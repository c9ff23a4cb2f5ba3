/* SPDX-License-Identifier: MIT */
/* Test helpers: an in-process server on port 0, clients, stream drivers. */
#ifndef REBOUND_TEST_HELPERS_H
#define REBOUND_TEST_HELPERS_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rebound/rebound.h"

/* One readiness/completion configuration the echo suite runs against. */
struct engine_param {
	enum rb_engine engine;
	enum rb_trigger trigger;
	enum rb_copy copy;
	unsigned uring_off; /* uring: RB_URING_* features switched off */
	size_t conn_buffer; /* --conn-buffer, 0 = the default */
	size_t send_zc;     /* uring: --uring-send-zc (0: off) */
};

/* Every engine configuration that is built, for parameterized tests. */
size_t th_engine_params(struct engine_param **out);
/* One configuration per engine that serves UDP (the copy mode and uring's
 * stream features do not apply to datagrams). */
size_t th_udp_engine_params(struct engine_param **out);
void th_engine_param_describe(const struct engine_param *p, char *buf, size_t len);

struct test_server {
	struct rb_server *srv;
	struct rb_config cfg;
	pthread_t thread;
	int port;
	int run_result;
};

/* Start a server on tcp://127.0.0.1:0 in a thread; tweak may adjust cfg. */
void th_server_start(struct test_server *ts, const struct engine_param *p,
                     void (*tweak)(struct rb_config *cfg));
/* The same in two steps: listening (the port known), then serving. */
void th_server_create(struct test_server *ts, const struct engine_param *p,
                      void (*tweak)(struct rb_config *cfg));
void th_server_run(struct test_server *ts);
/* Stop it, join the thread, free it. */
void th_server_stop(struct test_server *ts);
/* Wait (bounded, asserting) until pred(stats, arg) is true. */
void th_wait_stats(struct test_server *ts, bool (*pred)(const struct rb_stats *, void *), void *arg,
                   const char *what);

/* Connected blocking TCP socket to 127.0.0.1:port. */
int th_connect(int port);
/* Same, with SO_RCVBUF/SO_SNDBUF set before connecting (0 = leave alone). */
int th_connect_bufs(int port, int rcvbuf, int sndbuf);
void th_set_nonblock(int fd);

/* Deterministic pseudo-random bytes. */
uint64_t th_rand(uint64_t *state);
void th_fill(unsigned char *buf, size_t len, uint64_t seed);

/*
 * A client stream: send `len` bytes of `data` in pieces of 1..max_piece
 * bytes, half-close, and expect exactly the same bytes back followed by EOF.
 */
struct th_stream {
	int fd;
	const unsigned char *data;
	size_t len;
	size_t sent, recvd;
	size_t max_piece;
	uint64_t rng;
	bool shut, eof;
	unsigned char *got; /* received bytes, compared at the end */
};

/* Drive n streams concurrently (one poll loop) to completion; asserts integrity. */
void th_run_streams(struct th_stream *s, size_t n);

/*
 * On a non-blocking fd, send data (never reading) until pred holds for the
 * server's stats, waiting for it (bounded) once everything is sent.
 * Returns the bytes sent.
 */
size_t th_send_until(struct test_server *ts, int fd, const unsigned char *data, size_t len,
                     bool (*pred)(const struct rb_stats *, void *), void *arg, const char *what);
/* Send the rest of data from offset sent, read all len bytes back, assert equal. */
void th_send_rest_and_verify(int fd, const unsigned char *data, size_t len, size_t sent);

/*
 * The environment for a spawned daemon: ours, with ASAN_OPTIONS replaced by
 * REBOUND_CHILD_ASAN_OPTIONS (leak detection on, unlike the Criterion runner,
 * so a leak at exit makes the daemon's status non-zero) and extra (may be
 * NULL) added.
 */
char **th_child_env(const char *const *extra);
/* Read fd to EOF into buf (NUL-terminated), then close it. */
void th_slurp(int fd, char *buf, size_t len);

#endif
