/* SPDX-License-Identifier: MIT */
/*
 * The io_uring engine beyond the shared echo suite (which runs on it too):
 * a 256 MiB stream, 1000 clients, a buffer ring far too small for the load,
 * a peer that never reads next to busy ones, the single-shot receive path,
 * graceful and forced stops, several workers, and io_uring made unavailable
 * by a seccomp filter (explicit error, exit 3; auto falls back).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <netinet/in.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "rb_config.h"

#if RB_HAVE_URING
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

/* Test hook in proactor_uring.c: single-shot receives only. */
extern int rb__uring_test_single_recv;

static const struct engine_param uring_param = {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV};

/* Skip, saying why, only when this machine cannot run io_uring at all. */
static void need_uring(void)
{
	char why[256] = "";

	if (rb_engine_available(RB_ENGINE_URING, why, sizeof(why)) < 0)
		cr_skip_test("io_uring cannot run on this machine: %s", why);
}

static bool all_closed(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg && st->active == 0;
}

static void expect_clean(struct test_server *ts, uint64_t conns, uint64_t bytes)
{
	struct rb_stats st;

	th_wait_stats(ts, all_closed, &conns, "every connection to close");
	rb_server_stats(ts->srv, &st);
	cr_expect_eq(st.accepted, conns);
	cr_expect_eq(st.bytes_in, bytes, "bytes_in %lu, want %lu", (unsigned long)st.bytes_in,
	             (unsigned long)bytes);
	cr_expect_eq(st.bytes_out, bytes, "bytes_out %lu, want %lu", (unsigned long)st.bytes_out,
	             (unsigned long)bytes);
	cr_expect_eq(st.buffered, 0);
	cr_expect_eq(st.resets, 0);
}

static void raise_nofile(rlim_t want)
{
	struct rlimit rl;

	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	if (rl.rlim_cur >= want)
		return;
	if (rl.rlim_max < want)
		cr_skip_test("RLIMIT_NOFILE hard limit %lu is below the %lu this test needs",
		             (unsigned long)rl.rlim_max, (unsigned long)want);
	rl.rlim_cur = want;
	cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
}

/*
 * A long stream generated and checked block by block, so 256 MiB need no
 * 256 MiB buffers: block i is th_fill(seed + i).
 */
#define BLOCK (1u << 20)

struct gen {
	uint64_t seed;
	uint64_t block; /* which block buf holds, or UINT64_MAX */
	unsigned char *buf;
};

static const unsigned char *gen_at(struct gen *g, uint64_t off, size_t *avail)
{
	uint64_t b = off / BLOCK;

	if (g->block != b) {
		th_fill(g->buf, BLOCK, g->seed + b);
		g->block = b;
	}
	*avail = BLOCK - off % BLOCK;
	return g->buf + off % BLOCK;
}

static void run_long_stream(int port, uint64_t len)
{
	struct gen tx = {.seed = 1000, .block = UINT64_MAX, .buf = malloc(BLOCK)};
	struct gen rx = {.seed = 1000, .block = UINT64_MAX, .buf = malloc(BLOCK)};
	unsigned char *got = malloc(BLOCK);
	uint64_t sent = 0, recvd = 0;
	bool shut = false;
	int fd = th_connect(port);

	th_set_nonblock(fd);
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN | (sent < len ? POLLOUT : 0)};
		cr_assert_gt(poll(&pfd, 1, 20000), 0, "stalled at %lu sent, %lu echoed",
		             (unsigned long)sent, (unsigned long)recvd);
		while (sent < len) {
			size_t avail;
			const unsigned char *p = gen_at(&tx, sent, &avail);
			if (avail > len - sent)
				avail = (size_t)(len - sent);
			ssize_t r = send(fd, p, avail, MSG_NOSIGNAL);
			if (r < 0) {
				cr_assert_eq(errno, EAGAIN, "send: %s", strerror(errno));
				break;
			}
			sent += (uint64_t)r;
		}
		if (sent == len && !shut) {
			cr_assert_eq(shutdown(fd, SHUT_WR), 0);
			shut = true;
		}
		for (;;) {
			ssize_t r = recv(fd, got, BLOCK - recvd % BLOCK, 0);
			if (r < 0) {
				cr_assert_eq(errno, EAGAIN, "recv: %s", strerror(errno));
				break;
			}
			if (r == 0) {
				cr_assert_eq(recvd, len, "EOF after %lu of %lu bytes",
				             (unsigned long)recvd, (unsigned long)len);
				close(fd);
				free(tx.buf);
				free(rx.buf);
				free(got);
				return;
			}
			size_t avail;
			const unsigned char *want = gen_at(&rx, recvd, &avail);
			cr_assert_leq((size_t)r, avail);
			if (memcmp(got, want, (size_t)r) != 0) {
				size_t i = 0;
				while (got[i] == want[i])
					i++;
				cr_assert_fail("byte %lu differs", (unsigned long)(recvd + i));
			}
			recvd += (uint64_t)r;
		}
	}
}

Test(uring, stream_256m, .timeout = 300)
{
	const uint64_t len = 256ull << 20;
	struct test_server ts;

	need_uring();
	th_server_start(&ts, &uring_param, NULL);
	run_long_stream(ts.port, len);
	expect_clean(&ts, 1, len);
	th_server_stop(&ts);
}

static void run_many(struct test_server *ts, size_t n, size_t base, size_t step, size_t piece,
                     uint64_t *total)
{
	struct th_stream *s = calloc(n, sizeof(*s));
	unsigned char *data = malloc(4u << 20);

	th_fill(data, 4u << 20, n);
	for (size_t i = 0; i < n; i++) {
		s[i] = (struct th_stream){
		        .fd = th_connect(ts->port),
		        .data = data + (i * 4099) % (1u << 20),
		        .len = base + (i * step) % (3u << 20),
		        .max_piece = piece ? piece : 1 + (i * 7919) % 70000,
		        .rng = i + 1,
		};
		*total += s[i].len;
	}
	th_run_streams(s, n);
	for (size_t i = 0; i < n; i++)
		close(s[i].fd);
	free(s);
	free(data);
}

Test(uring, concurrent_1000, .timeout = 300)
{
	struct test_server ts;
	uint64_t total = 0;

	need_uring();
	raise_nofile(4096);
	th_server_start(&ts, &uring_param, NULL);
	run_many(&ts, 1000, 1000, 977, 0, &total);
	expect_clean(&ts, 1000, total);
	th_server_stop(&ts);
}

static void tiny_ring(struct rb_config *cfg)
{
	cfg->uring_buffers = 8;
	cfg->chunk_size = 4096;
}

/*
 * Eight 4 KiB buffers for 100 streams sent in pieces of 1 byte to 64 KiB:
 * receives keep finding the ring empty (ENOBUFS), wait for buffers to come
 * back, and every stream still arrives intact and in order.
 */
Test(uring, tiny_buffer_ring, .timeout = 300)
{
	struct test_server ts;
	struct rb_stats st;
	uint64_t total = 0;

	need_uring();
	th_server_start(&ts, &uring_param, tiny_ring);
	run_many(&ts, 100, 1, 33331, 0, &total);
	run_many(&ts, 20, 5000, 1, 3, &total); /* tiny pieces: a buffer per few bytes */
	expect_clean(&ts, 120, total);
	rb_server_stats(ts.srv, &st);
	cr_expect_leq(st.chunks_allocated, 8, "%lu chunks for an 8-buffer ring",
	              (unsigned long)st.chunks_allocated);
	th_server_stop(&ts);
}

struct sink {
	int fd;
	size_t len, sent;
	const unsigned char *data;
};

static bool paused(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->pauses > 0;
}

/*
 * A peer that never reads may hold only its share of a small ring: busy
 * streams next to it still complete, then it reads and gets every byte.
 */
Test(uring, non_reader_does_not_starve_others, .timeout = 300)
{
	const size_t len = 2u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	uint64_t total = 0;
	size_t sent = 0;
	int fd;

	need_uring();
	th_fill(data, len, 4242);
	th_server_start(&ts, &uring_param, tiny_ring);
	fd = th_connect_bufs(ts.port, 16384, 16384);
	th_set_nonblock(fd);
	/* Fill until the server pauses it (at its share of the buffers). */
	while (sent < len) {
		ssize_t r = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
		if (r > 0) {
			sent += (size_t)r;
			continue;
		}
		cr_assert_eq(errno, EAGAIN);
		break;
	}
	th_wait_stats(&ts, paused, NULL, "the non-reading peer to be paused");
	run_many(&ts, 30, 20000, 7777, 0, &total);
	/* Now it reads (and sends the rest): all of it, in order. */
	th_send_rest_and_verify(fd, data, len, sent);
	close(fd);
	expect_clean(&ts, 31, total + len);
	th_server_stop(&ts);
	free(data);
}

struct cap_wait {
	uint64_t cap;
	bool exact; /* wait for the count at the cap itself */
};

/*
 * Paused at the cap. Exactly at it with plain sends; with zero-copy sends
 * the count may have dropped a little since: bytes a send had left stay
 * counted until their notification, which comes only once the peer's
 * socket has taken them (CI saw 16,383 bytes under the cap, the flow
 * paused, as it should, until below half).
 */
static bool at_cap(const struct rb_stats *st, void *arg)
{
	const struct cap_wait *cw = arg;

	return st->pauses > 0 && (cw->exact ? st->buffered == cw->cap : st->buffered <= cw->cap);
}

/* Stop at the cap (exactly, or for zero-copy sends at most at it), then
 * give everything back in order. */
static void slow_reader_cap(struct test_server *ts, size_t len, bool exact)
{
	unsigned char *data = malloc(len);
	struct cap_wait cw = {.cap = ts->cfg.conn_buffer, .exact = exact};
	struct rb_stats st;
	size_t sent;
	int fd = th_connect_bufs(ts->port, 65536, 65536);

	th_fill(data, len, 99);
	th_set_nonblock(fd);
	sent = th_send_until(ts, fd, data, len, at_cap, &cw, "the connection to pause at its cap");
	rb_server_stats(ts->srv, &st);
	if (exact)
		cr_assert_eq(st.buffered, cw.cap);
	cr_assert_leq(st.peak_buffered, cw.cap);
	cr_assert_leq(st.peak_conn_buffered, cw.cap);
	th_send_rest_and_verify(fd, data, len, sent);
	rb_server_stats(ts->srv, &st);
	cr_assert_leq(st.peak_buffered, cw.cap);
	cr_assert_leq(st.peak_conn_buffered, cw.cap);
	close(fd);
	free(data);
}

static void slow_reader(struct test_server *ts, size_t len)
{
	slow_reader_cap(ts, len, true);
}

static void odd_cap(struct rb_config *cfg)
{
	cfg->conn_buffer = 100000; /* not a multiple of the chunk size */
}

/* The exact cap holds with an odd cap on the multishot path... */
Test(uring, exact_cap_multishot, .timeout = 120)
{
	struct test_server ts;

	need_uring();
	th_server_start(&ts, &uring_param, odd_cap);
	slow_reader(&ts, 32u << 20);
	expect_clean(&ts, 1, 32u << 20);
	th_server_stop(&ts);
}

/* ... and on the single-shot path kernels without multishot limits take. */
Test(uring, single_shot_path, .timeout = 300)
{
	struct test_server ts;
	uint64_t total = 0;

	need_uring();
	rb__uring_test_single_recv = 1;
	th_server_start(&ts, &uring_param, odd_cap);
	rb__uring_test_single_recv = 0;
	cr_assert_not_null(strstr(rb_server_engine_detail(ts.srv), "recv single-shot"), "%s",
	                   rb_server_engine_detail(ts.srv));
	slow_reader(&ts, 32u << 20);
	total += 32u << 20;
	run_many(&ts, 50, 3000, 40009, 0, &total);
	expect_clean(&ts, 51, total);
	th_server_stop(&ts);
}

static char relay_url[64];

static void relay_tiny_ring(struct rb_config *cfg)
{
	tiny_ring(cfg);
	odd_cap(cfg);
	cfg->forward = relay_url;
}

/*
 * A relay on the single-shot path with an 8-buffer ring and an odd cap:
 * both sockets of every session keep finding the ring empty, both flows
 * stop at their caps, and every stream comes back intact through an echo
 * upstream.
 */
Test(uring, relay_tiny_ring_single_shot, .timeout = 300)
{
	struct test_server up, relay;
	struct rb_stats st;
	uint64_t total = 0, n = 40;

	need_uring();
	th_server_start(&up, NULL, NULL);
	snprintf(relay_url, sizeof(relay_url), "tcp://127.0.0.1:%d", up.port);
	rb__uring_test_single_recv = 1;
	th_server_start(&relay, &uring_param, relay_tiny_ring);
	rb__uring_test_single_recv = 0;
	run_many(&relay, n, 1, 77773, 0, &total);
	th_wait_stats(&relay, all_closed, &n, "every relayed session to close");
	rb_server_stats(relay.srv, &st);
	cr_expect_eq(st.upstream_connects, n);
	cr_expect_eq(st.upstream_bytes_out, total);
	cr_expect_eq(st.upstream_bytes_in, total);
	cr_expect_eq(st.bytes_in, 2 * total);
	cr_expect_eq(st.bytes_out, 2 * total);
	cr_expect_leq(st.peak_conn_buffered, 100000);
	cr_expect_eq(st.buffered, 0);
	cr_expect_eq(st.resets, 0);
	cr_expect_leq(st.chunks_allocated, 8, "%lu chunks for an 8-buffer ring",
	              (unsigned long)st.chunks_allocated);
	th_server_stop(&relay);
	th_server_stop(&up);
}

static void four_threads(struct rb_config *cfg)
{
	cfg->threads = 4;
}

Test(uring, four_workers, .timeout = 300)
{
	struct test_server ts;
	uint64_t total = 0;

	need_uring();
	th_server_start(&ts, &uring_param, four_threads);
	run_many(&ts, 200, 100, 12347, 0, &total);
	expect_clean(&ts, 200, total);
	th_server_stop(&ts);
}

static void sqpoll(struct rb_config *cfg)
{
	cfg->uring_sqpoll_ms = 20;
	cfg->threads = 2;
}

/* A kernel thread submits: the same streams, intact (two rings, two threads). */
Test(uring, sqpoll, .timeout = 300)
{
	struct test_server ts;
	uint64_t total = 0;

	need_uring();
	th_server_start(&ts, &uring_param, sqpoll);
	cr_assert(strncmp(rb_server_engine_detail(ts.srv), "sqpoll", 6) == 0, "%s",
	          rb_server_engine_detail(ts.srv));
	run_many(&ts, 100, 100, 23456, 0, &total);
	expect_clean(&ts, 100, total);
	th_server_stop(&ts);
}

static bool buffered_all(const struct rb_stats *st, void *arg)
{
	return st->bytes_in == *(uint64_t *)arg;
}

/*
 * Stop with echoes pending: the listener is closed at once (new peers are
 * refused), the pending bytes are still flushed, then FIN.
 */
Test(uring, graceful_stop_flushes, .timeout = 60)
{
	const size_t len = 300000;
	unsigned char *data = malloc(len), *got = malloc(len + 1);
	uint64_t want = len;
	struct test_server ts;
	size_t n = 0;
	int fd, probe;

	need_uring();
	th_fill(data, len, 8);
	th_server_start(&ts, &uring_param, NULL);
	fd = th_connect_bufs(ts.port, 8192, 8192);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, MSG_NOSIGNAL);
		cr_assert_gt(r, 0);
		off += (size_t)r;
	}
	th_wait_stats(&ts, buffered_all, &want, "the server to receive everything");
	rb_server_stop(ts.srv);
	/* New peers are refused once the worker has let go of the listener. */
	for (;;) {
		struct sockaddr_in sin = {.sin_family = AF_INET,
		                          .sin_port = htons((uint16_t)ts.port),
		                          .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
		probe = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		int rc = connect(probe, (struct sockaddr *)&sin, sizeof(sin));
		int err = errno;
		close(probe);
		if (rc < 0 && err == ECONNREFUSED)
			break;
		poll(NULL, 0, 5);
	}
	for (;;) {
		ssize_t r = recv(fd, got + n, len + 1 - n, 0);
		cr_assert_geq(r, 0, "recv: %s", strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
	}
	cr_assert_eq(n, len);
	cr_assert(memcmp(got, data, len) == 0);
	close(fd);
	th_server_stop(&ts);
	free(data);
	free(got);
}

static void short_deadline(struct rb_config *cfg)
{
	cfg->shutdown_timeout_ms = 100;
}

/* A peer that never reads cannot hold up a stop past its deadline: the
 * sends in flight are cancelled and their CQEs awaited before freeing. */
Test(uring, stop_deadline_cancels, .timeout = 60)
{
	const size_t len = 8u << 20;
	unsigned char *data = calloc(1, len);
	struct cap_wait cw = {.exact = true};
	struct test_server ts;
	int fd;

	need_uring();
	th_server_start(&ts, &uring_param, short_deadline);
	cw.cap = ts.cfg.conn_buffer;
	fd = th_connect_bufs(ts.port, 8192, 8192);
	th_set_nonblock(fd);
	for (;;) {
		struct rb_stats st;
		while (send(fd, data, len, MSG_NOSIGNAL) > 0)
			;
		rb_server_stats(ts.srv, &st);
		if (at_cap(&st, &cw))
			break;
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, 10);
	}
	th_server_stop(&ts); /* asserts rb_server_run returned 0 */
	close(fd);
	free(data);
}

Test(uring, detail_line)
{
	struct test_server ts;
	const char *d;

	need_uring();
	th_server_start(&ts, &uring_param, NULL);
	d = rb_server_engine_detail(ts.srv);
	cr_expect_not_null(strstr(d, "4096 buffers of 16384"), "%s", d);
	/* Each feature is either used or said to be missing from the kernel. */
	cr_expect(strstr(d, "bundles: yes") || strstr(d, "bundles: no (kernel)"), "%s", d);
	cr_expect(strstr(d, "incremental buffers: yes") ||
	                  strstr(d, "incremental buffers: no (kernel)"),
	          "%s", d);
	/* Batching is opt-in; the test helpers ask for a 50 us window. */
	cr_expect(strstr(d, "batching: min-wait 50 us") || strstr(d, "batching: no (kernel)"), "%s",
	          d);
	th_server_stop(&ts);
}

/* ---- issue 14: bundles, incremental buffers, batching ---- */

/* Test hooks and counters in proactor_uring.c. */
extern unsigned rb__uring_test_unsupported;
struct rb_uring_test_counters {
	uint64_t bundle_cqes, bufs_consumed, shared_bufs, shadow_miss, batched_waits;
	uint64_t zc_sends, zc_more, zc_notifs;
};
extern struct rb_uring_test_counters rb__uring_test_counters;

static unsigned test_off;
static unsigned test_batch_us;
static size_t test_send_zc;

static void features(struct rb_config *cfg)
{
	cfg->uring_off = test_off;
	cfg->uring_batch_us = test_batch_us;
	cfg->uring_send_zc = test_send_zc;
}

/* Skip, saying why, when the kernel lacks a feature the test is about. */
static void need_feature(const char *what)
{
	struct test_server ts;
	char want[64];

	need_uring();
	th_server_start(&ts, &uring_param, NULL);
	snprintf(want, sizeof(want), "%s: no (kernel)", what);
	if (strstr(rb_server_engine_detail(ts.srv), want)) {
		th_server_stop(&ts);
		cr_skip_test("this kernel has no %s", what);
	}
	th_server_stop(&ts);
}

/* 16 MiB in large pieces: receives find several buffers' worth queued. */
static void bundle_stream(unsigned off)
{
	const size_t len = 16u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct th_stream st;

	th_fill(data, len, 14);
	test_off = off;
	th_server_start(&ts, &uring_param, features);
	memset(&rb__uring_test_counters, 0, sizeof(rb__uring_test_counters));
	st = (struct th_stream){.fd = th_connect(ts.port),
	                        .data = data,
	                        .len = len,
	                        .max_piece = 1u << 20,
	                        .rng = 3};
	th_run_streams(&st, 1);
	close(st.fd);
	expect_clean(&ts, 1, len);
	th_server_stop(&ts);
	cr_expect_eq(rb__uring_test_counters.shadow_miss, 0);
	free(data);
}

Test(uring, bundles_cover_several_buffers, .timeout = 120)
{
	need_feature("bundles");
	bundle_stream(RB_URING_INC); /* whole buffers: bundles alone */
	cr_expect_gt(rb__uring_test_counters.bundle_cqes, 0, "no receive took two buffers");
	bundle_stream(0); /* and with incremental buffers */
	cr_expect_gt(rb__uring_test_counters.bundle_cqes, 0, "no receive took two buffers");
}

Test(uring, bundles_off_one_buffer_per_receive, .timeout = 120)
{
	need_uring();
	bundle_stream(RB_URING_BUNDLE | RB_URING_INC);
	cr_expect_eq(rb__uring_test_counters.bundle_cqes, 0);
	bundle_stream(RB_URING_BUNDLE);
	cr_expect_eq(rb__uring_test_counters.bundle_cqes, 0);
}

/* n request/response rounds of size bytes on one connection. */
static void ping_pong(int port, unsigned n, size_t size)
{
	unsigned char msg[512], got[512];
	int fd = th_connect(port);
	struct timeval tv = {.tv_sec = 20}; /* a lost answer fails, not hangs */

	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0);
	cr_assert_leq(size, sizeof(msg));
	for (unsigned i = 0; i < n; i++) {
		size_t have = 0;
		th_fill(msg, size, i);
		cr_assert_eq(send(fd, msg, size, MSG_NOSIGNAL), (ssize_t)size);
		while (have < size) {
			ssize_t r = recv(fd, got + have, size - have, 0);
			/* With SO_RCVTIMEO, a stop and continue (Criterion's
			 * SIGSTOP and SIGCONT) ends the receive with EINTR. */
			if (r < 0 && errno == EINTR)
				continue;
			cr_assert_gt(r, 0, "round %u: %s", i, r < 0 ? strerror(errno) : "EOF");
			have += (size_t)r;
		}
		cr_assert_arr_eq(got, msg, size, "round %u", i);
	}
	close(fd);
}

/*
 * 1000 messages of 64 bytes: with incremental consumption they share
 * buffers, so the kernel finishes about one 16 KiB buffer per 256 of them;
 * without, every message takes (and holds until sent back) a whole buffer.
 */
static uint64_t small_messages(unsigned off)
{
	struct test_server ts;

	test_off = off;
	th_server_start(&ts, &uring_param, features);
	memset(&rb__uring_test_counters, 0, sizeof(rb__uring_test_counters));
	ping_pong(ts.port, 1000, 64);
	expect_clean(&ts, 1, 64000);
	th_server_stop(&ts);
	cr_expect_eq(rb__uring_test_counters.shadow_miss, 0);
	return rb__uring_test_counters.bufs_consumed;
}

Test(uring, incremental_buffers_shared_by_small_messages, .timeout = 60)
{
	uint64_t used;

	need_feature("incremental buffers");
	used = small_messages(0);
	cr_expect_leq(used, 64000 / 16384, "%lu buffers for 64000 bytes", (unsigned long)used);
	cr_expect_gt(rb__uring_test_counters.shared_bufs, 900);
}

Test(uring, incremental_off_one_buffer_per_message, .timeout = 60)
{
	uint64_t used;

	need_uring();
	used = small_messages(RB_URING_INC);
	/* At least one per message, plus the one the EOF takes. */
	cr_expect_geq(used, 1000, "%lu buffers for 1000 messages", (unsigned long)used);
	cr_expect_eq(rb__uring_test_counters.shared_bufs, 0);
}

/*
 * Ping-pong with a batching window far longer than any test: each round is
 * one wake-up (the send that completes inline and the next request in one
 * io_uring_enter); without batching, two.
 */
static uint64_t pingpong_wakeups(unsigned off)
{
	struct test_server ts;
	struct rb_stats st;

	test_off = off;
	test_batch_us = 30u * 1000 * 1000;
	th_server_start(&ts, &uring_param, features);
	ping_pong(ts.port, 500, 64);
	expect_clean(&ts, 1, 32000);
	rb_server_stats(ts.srv, &st);
	th_server_stop(&ts);
	return st.wakeups;
}

Test(uring, batching_one_wakeup_per_message, .timeout = 20)
{
	uint64_t n;

	need_feature("batching");
	n = pingpong_wakeups(0);
	cr_expect_leq(n, 500 + 20, "%lu wake-ups for 500 messages", (unsigned long)n);
	cr_expect_gt(rb__uring_test_counters.batched_waits, 400);
}

Test(uring, batching_off_two_wakeups_per_message, .timeout = 20)
{
	uint64_t n;

	need_uring();
	n = pingpong_wakeups(RB_URING_BATCH);
	cr_expect_geq(n, 2 * 500, "%lu wake-ups for 500 messages", (unsigned long)n);
	cr_expect_eq(rb__uring_test_counters.batched_waits, 0);
}

/*
 * A send whose completion someone needs must wake the worker at once, even
 * with a 30 s batching window (the test times out in 20 s): a stream larger
 * than the cap (paused until sends drain it), small pieces, half-close
 * (the FIN follows the last send), a slow reader (sends that do not
 * complete inline), 50 at once.
 */
Test(uring, batching_never_stalls, .timeout = 20)
{
	struct test_server ts;
	uint64_t total = 0;

	need_feature("batching");
	test_batch_us = 30u * 1000 * 1000;
	th_server_start(&ts, &uring_param, features);
	run_many(&ts, 50, 1000, 65537, 0, &total);
	run_many(&ts, 1, 3u << 20, 0, 0, &total);
	run_many(&ts, 10, 1, 1, 7, &total);
	expect_clean(&ts, 61, total);
	th_server_stop(&ts);
}

/* Every feature reported absent by the probe (as on a 6.1 kernel): the
 * start-up line says so, nothing is used, streams are intact. */
Test(uring, probe_falls_back_when_absent, .timeout = 120)
{
	struct test_server ts;
	uint64_t total = 0;
	const char *d;

	/* Before anything probes: the probe runs once per process. */
	rb__uring_test_unsupported =
	        RB_URING_BUNDLE | RB_URING_INC | RB_URING_BATCH | RB_URING_SEND_ZC;
	need_uring();
	test_batch_us = 50; /* asked for, and absent */
	test_send_zc = 1;   /* the same: plain sends */
	th_server_start(&ts, &uring_param, features);
	d = rb_server_engine_detail(ts.srv);
	cr_expect_not_null(strstr(d, "bundles: no (kernel), incremental buffers: no (kernel), "
	                             "batching: no (kernel), send zc: no (kernel)"),
	                   "%s", d);
	memset(&rb__uring_test_counters, 0, sizeof(rb__uring_test_counters));
	run_many(&ts, 20, 100000, 40000, 0, &total);
	ping_pong(ts.port, 100, 64);
	total += 6400;
	expect_clean(&ts, 21, total);
	th_server_stop(&ts);
	cr_expect_eq(rb__uring_test_counters.bundle_cqes, 0);
	cr_expect_eq(rb__uring_test_counters.shared_bufs, 0);
	cr_expect_eq(rb__uring_test_counters.batched_waits, 0);
	cr_expect_eq(rb__uring_test_counters.shadow_miss, 0);
	cr_expect_eq(rb__uring_test_counters.zc_sends, 0);
}

/* --uring-off switches a feature off and the start-up line says so. */
Test(uring, features_switched_off)
{
	struct test_server ts;
	const char *d;

	need_uring();
	test_off = RB_URING_BUNDLE | RB_URING_INC | RB_URING_BATCH;
	th_server_start(&ts, &uring_param, features);
	d = rb_server_engine_detail(ts.srv);
	cr_expect(strstr(d, "bundles: off") || strstr(d, "bundles: no (kernel)"), "%s", d);
	cr_expect(strstr(d, "incremental buffers: off") ||
	                  strstr(d, "incremental buffers: no (kernel)"),
	          "%s", d);
	cr_expect(strstr(d, "batching: off") || strstr(d, "batching: no (kernel)"), "%s", d);
	th_server_stop(&ts);
}

/* ---- io_uring unavailable: a seccomp filter in a child process ---- */

#if defined(__x86_64__)
#define SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_ARCH AUDIT_ARCH_AARCH64
#endif

struct child {
	pid_t pid;
	int out; /* stdout, read end */
	int err; /* stderr, read end */
};

/* Descriptor limit (soft and hard) for the next spawned daemon, 0 = inherit. */
static rlim_t spawn_nofile;

/* Run rebound with io_uring_setup failing with errno_val (0: no filter). */
static void spawn_filtered(struct child *ch, int errno_val, const char *const *args)
{
	const char *bin = getenv("REBOUND_BIN");
	const char *argv[16];
	char **envp = th_child_env(NULL);
	size_t n = 0;
	int o[2], e[2];

	cr_assert_not_null(bin, "REBOUND_BIN is not set (run through meson test)");
	argv[n++] = bin;
	while (*args && n < 15)
		argv[n++] = *args++;
	argv[n] = NULL;
	cr_assert_eq(pipe2(o, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	ch->pid = fork();
	cr_assert_geq(ch->pid, 0);
	if (ch->pid == 0) {
#ifdef SECCOMP_ARCH
		struct sock_filter f[] = {
		        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch)),
		        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_ARCH, 1, 0),
		        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_io_uring_setup, 0, 1),
		        BPF_STMT(BPF_RET | BPF_K,
		                 SECCOMP_RET_ERRNO | ((unsigned)errno_val & SECCOMP_RET_DATA)),
		        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
		};
		struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
		if (errno_val && (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
		                  prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0))
			_exit(120);
#endif
		struct rlimit rl = {spawn_nofile, spawn_nofile};
		if (spawn_nofile && setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(122);
		/* A failed assertion ends the test process: take the daemon along. */
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		dup2(o[1], 1);
		dup2(e[1], 2);
		execve(bin, (char *const *)argv, envp);
		_exit(121);
	}
	close(o[1]);
	close(e[1]);
	ch->out = o[0];
	ch->err = e[0];
}

/* Collect stdout (into out, if not NULL) and stderr; return the exit status. */
static int child_exit(struct child *ch, char *err, size_t len, char *out, size_t olen)
{
	char discard[4096];
	int st;

	th_slurp(ch->err, err, len);
	if (out)
		th_slurp(ch->out, out, olen);
	else
		th_slurp(ch->out, discard, sizeof(discard));
	cr_assert_eq(waitpid(ch->pid, &st, 0), ch->pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

static void need_seccomp(void)
{
#ifndef SECCOMP_ARCH
	cr_skip_test("no seccomp architecture constant for this CPU in the test");
#endif
}

Test(uring, unavailable_explicit_error_eperm, .timeout = 60)
{
	struct child ch;
	char err[1024];

	need_uring();
	need_seccomp();
	spawn_filtered(
	        &ch, EPERM,
	        (const char *const[]){"--engine", "uring", "--listen", "tcp://127.0.0.1:0", NULL});
	cr_assert_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'uring' cannot run here: io_uring_setup was "
	                      "refused (EPERM): a seccomp filter or container policy blocks "
	                      "io_uring\n");
}

Test(uring, unavailable_explicit_error_enosys, .timeout = 60)
{
	struct child ch;
	char err[1024];

	need_uring();
	need_seccomp();
	spawn_filtered(
	        &ch, ENOSYS,
	        (const char *const[]){"--engine", "uring", "--listen", "tcp://127.0.0.1:0", NULL});
	cr_assert_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'uring' cannot run here: io_uring_setup is not "
	                      "implemented (ENOSYS): a kernel without CONFIG_IO_URING, or a "
	                      "seccomp filter\n");
}

/* Read start-up lines up to the engine line (returned in line); the port
 * comes from the "listening on" line. */
static int read_startup(struct child *ch, char *line, size_t size)
{
	size_t len = 0;
	int port = -1;

	for (;;) {
		ssize_t r = read(ch->err, line + len, 1);
		cr_assert_eq(r, 1, "daemon exited early: %.*s", (int)len, line);
		if (line[len] != '\n') {
			len++;
			cr_assert_lt(len, size - 1);
			continue;
		}
		line[len] = '\0';
		len = 0;
		if (strncmp(line, "rebound: engine ", 16) == 0)
			break;
		sscanf(line, "rebound: listening on tcp://127.0.0.1:%d", &port);
	}
	cr_assert_gt(port, 0);
	return port;
}

/* The daemon on uring: serves, logs stats on SIGUSR1, stops on SIGTERM with
 * a FIN to idle peers, exit 0 (with leak detection in sanitized builds). */
Test(uring, daemon_lifecycle, .timeout = 60)
{
	const size_t len = 1u << 20;
	unsigned char *data = malloc(len);
	struct child ch;
	char line[512], err[4096], want[256];
	int port, idle;
	char b = 'x';

	need_uring();
	th_fill(data, len, 5);
	spawn_filtered(
	        &ch, 0,
	        (const char *const[]){"--engine", "uring", "--listen", "tcp://127.0.0.1:0", NULL});
	port = read_startup(&ch, line, sizeof(line));
	cr_assert(strncmp(line, "rebound: engine uring (", 23) == 0, "%s", line);
	cr_assert_not_null(strstr(line, "bundles: "), "%s", line);
	struct th_stream s[2];
	for (int i = 0; i < 2; i++)
		s[i] = (struct th_stream){
		        .fd = th_connect(port), .data = data, .len = len, .rng = (uint64_t)i};
	th_run_streams(s, 2);
	for (int i = 0; i < 2; i++)
		close(s[i].fd);
	idle = th_connect(port);
	cr_assert_eq(send(idle, &b, 1, 0), 1);
	cr_assert_eq(recv(idle, &b, 1, 0), 1);
	cr_assert_eq(kill(ch.pid, SIGUSR1), 0);
	size_t n = 0;
	while (n < sizeof(line) - 1 && read(ch.err, line + n, 1) == 1 && line[n] != '\n')
		n++;
	line[n] = '\0';
	const char *stats = "rebound: stats {\"accepted\":3,";
	cr_assert(strncmp(line, stats, strlen(stats)) == 0, "%s", line);
	cr_assert_eq(kill(ch.pid, SIGTERM), 0);
	cr_assert_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 0, "stderr: %s", err);
	snprintf(want, sizeof(want),
	         "rebound: stopped: 3 connections, %zu bytes in, %zu bytes out, engine uring\n",
	         2 * len + 1, 2 * len + 1);
	cr_assert_not_null(strstr(err, want), "no '%s' in: %s", want, err);
	cr_assert_eq(recv(idle, &b, 1, 0), 0, "the idle peer got no FIN");
	close(idle);
	free(data);
}

/*
 * Out of descriptors: the multishot accept fails with EMFILE, the reserve
 * descriptor accepts and closes the waiting peers (no spinning, no backlog
 * left hanging), and once descriptors free up new peers are served again.
 */
Test(uring, emfile_refuses_then_recovers, .timeout = 120)
{
	enum { N = 60 };
	int fds[N], served = 0, refused = 0, port;
	/* A whole stats line (1.4 KB): a shorter read would leave the rest of
	 * each in the pipe and send a signal per piece. */
	char line[8192], err[4096];
	struct child ch;

	need_uring();
	spawn_nofile = 32;
	spawn_filtered(
	        &ch, 0,
	        (const char *const[]){"--engine", "uring", "--listen", "tcp://127.0.0.1:0", NULL});
	spawn_nofile = 0;
	port = read_startup(&ch, line, sizeof(line));
	for (int i = 0; i < N; i++) {
		char b = (char)i;
		fds[i] = th_connect(port);
		cr_assert_eq(send(fds[i], &b, 1, MSG_NOSIGNAL), 1);
		ssize_t r = recv(fds[i], &b, 1, 0);
		if (r == 1) {
			cr_assert_eq(b, (char)i);
			served++;
		} else {
			refused++;
		}
	}
	cr_assert_gt(served, 0);
	cr_assert_gt(refused, 0, "%d served with a 32-descriptor limit", served);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	/* Once the daemon has closed its side of them (its stats say so)... */
	unsigned long refused_stat = 0;
	bool notice = false;
	for (;;) {
		size_t n = 0;
		unsigned long active = 1;
		cr_assert_eq(kill(ch.pid, SIGUSR1), 0);
		while (n < sizeof(line) - 1 && read(ch.err, line + n, 1) == 1 && line[n] != '\n')
			n++;
		line[n] = '\0';
		notice |= strstr(line, "refusing connections") != NULL;
		const char *a = strstr(line, "\"active\":");
		const char *r = strstr(line, "\"refused\":");
		if (!a || !r)
			continue; /* the refusal notice, not the stats line */
		sscanf(a, "\"active\":%lu", &active);
		sscanf(r, "\"refused\":%lu", &refused_stat);
		if (active == 0)
			break;
		poll(NULL, 0, 5);
	}
	cr_assert(notice, "no 'refusing connections' notice");
	cr_assert_eq(refused_stat, (unsigned long)refused, "server refused %lu, clients saw %d",
	             refused_stat, refused);
	/* ... descriptors are free again: a new peer gets its echo. */
	struct th_stream s = {
	        .fd = th_connect(port), .data = (const unsigned char *)line, .len = 200, .rng = 9};
	th_run_streams(&s, 1);
	close(s.fd);
	cr_assert_eq(kill(ch.pid, SIGTERM), 0);
	cr_assert_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 0, "stderr: %s", err);
}

/* --list-engines leaves uring out; --engine auto still serves. */
Test(uring, unavailable_auto_falls_back, .timeout = 60)
{
	struct child ch;
	char err[4096];
	char line[512];
	int port;

	need_uring();
	need_seccomp();
	spawn_filtered(
	        &ch, EPERM,
	        (const char *const[]){"--engine", "auto", "--listen", "tcp://127.0.0.1:0", NULL});
	port = read_startup(&ch, line, sizeof(line));
	cr_assert(strncmp(line, "rebound: engine epoll ", 22) == 0, "%s", line);
	struct th_stream s = {
	        .fd = th_connect(port), .data = (const unsigned char *)line, .len = 100, .rng = 3};
	th_run_streams(&s, 1);
	close(s.fd);
	cr_assert_eq(kill(ch.pid, SIGTERM), 0);
	cr_assert_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 0, "stderr: %s", err);

	char out[256];
	spawn_filtered(&ch, EPERM, (const char *const[]){"--list-engines", NULL});
	cr_assert_eq(child_exit(&ch, err, sizeof(err), out, sizeof(out)), 0);
	cr_assert_not_null(
	        strstr(out, "epoll unix udp splice relay services level timeouts impair\n"), "%s",
	        out);
	cr_assert_null(strstr(out, "uring"), "%s", out);
}

/* ---- issue 14: zero-copy sends (--uring-send-zc) ---- */

static uint64_t zc_counter(const uint64_t *field)
{
	return __atomic_load_n(field, __ATOMIC_RELAXED);
}

/* Every notification of a zero-copy send has come in. */
static void expect_zc_settled(void)
{
	uint64_t more = zc_counter(&rb__uring_test_counters.zc_more);
	uint64_t notifs = zc_counter(&rb__uring_test_counters.zc_notifs);

	cr_expect_eq(notifs, more, "%lu notifications for %lu zero-copy sends that announced one",
	             (unsigned long)notifs, (unsigned long)more);
}

static void zc_server(struct test_server *ts, size_t from, void (*tweak)(struct rb_config *cfg))
{
	char want[64];
	const char *d;

	test_off = 0;
	test_batch_us = 0;
	test_send_zc = from;
	th_server_start(ts, &uring_param, tweak);
	d = rb_server_engine_detail(ts->srv);
	snprintf(want, sizeof(want), "send zc: %zu", from);
	cr_assert_not_null(strstr(d, want), "%s", d);
	memset(&rb__uring_test_counters, 0, sizeof(rb__uring_test_counters));
}

/* Every send zero-copy (from 1 byte): streams of many sizes, in pieces of
 * every size, and one of 16 MiB, come back exact; every notification is in
 * when the worker exits. */
Test(uring, send_zc_streams_exact, .timeout = 180)
{
	const size_t len = 16u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct th_stream st;
	uint64_t total = len;

	need_feature("send zc");
	zc_server(&ts, 1, features);
	th_fill(data, len, 41);
	st = (struct th_stream){.fd = th_connect(ts.port),
	                        .data = data,
	                        .len = len,
	                        .max_piece = 1u << 20,
	                        .rng = 5};
	th_run_streams(&st, 1);
	close(st.fd);
	run_many(&ts, 40, 1, 37777, 0, &total);
	ping_pong(ts.port, 200, 64);
	total += 200 * 64;
	expect_clean(&ts, 42, total);
	th_server_stop(&ts);
	cr_expect_gt(rb__uring_test_counters.zc_sends, 200);
	cr_expect_gt(rb__uring_test_counters.zc_more, 0);
	expect_zc_settled();
	cr_expect_eq(rb__uring_test_counters.shadow_miss, 0);
	free(data);
}

/* Below the threshold sends stay plain: 512-byte ping-pong makes none; a
 * slow reader's backlog (sent as one send of everything queued) does. */
Test(uring, send_zc_from_threshold, .timeout = 120)
{
	struct test_server ts;

	need_feature("send zc");
	zc_server(&ts, 65536, features);
	ping_pong(ts.port, 200, 512);
	cr_expect_eq(zc_counter(&rb__uring_test_counters.zc_sends), 0);
	slow_reader_cap(&ts, 4u << 20, false);
	expect_clean(&ts, 2, 200 * 512 + (4u << 20));
	th_server_stop(&ts);
	cr_expect_gt(rb__uring_test_counters.zc_sends, 0);
	expect_zc_settled();
}

struct zc_wait {
	uint64_t buffered;
};

/* n connections at their cap, with zero-copy sends whose bytes the kernel
 * still holds (their peers do not read). */
static bool zc_stuck(const struct rb_stats *st, void *arg)
{
	uint64_t more = zc_counter(&rb__uring_test_counters.zc_more);
	uint64_t notifs = zc_counter(&rb__uring_test_counters.zc_notifs);

	return st->buffered == ((struct zc_wait *)arg)->buffered && more > notifs;
}

/* Every session gone, nothing buffered, every notification in. */
static bool zc_all_back(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->active == 0 && st->buffered == 0 &&
	       zc_counter(&rb__uring_test_counters.zc_notifs) ==
	               zc_counter(&rb__uring_test_counters.zc_more);
}

/* Fill n connections (never reading) until each is at its cap with
 * zero-copy bytes held by the kernel. */
static void zc_fill(struct test_server *ts, int *fd, size_t n)
{
	const size_t len = 1u << 20;
	unsigned char *data = calloc(1, len);
	struct zc_wait zw = {.buffered = n * ts->cfg.conn_buffer};
	struct rb_stats st;

	for (size_t i = 0; i < n; i++) {
		fd[i] = th_connect_bufs(ts->port, 8192, 8192);
		th_set_nonblock(fd[i]);
	}
	/* Keep every socket full until the server holds n caps (bounded: the
	 * test's timeout). */
	for (;;) {
		struct pollfd pfd[16];
		for (size_t i = 0; i < n; i++) {
			while (send(fd[i], data, len, MSG_NOSIGNAL) > 0)
				;
			pfd[i] = (struct pollfd){.fd = fd[i], .events = POLLOUT};
		}
		rb_server_stats(ts->srv, &st);
		if (zc_stuck(&st, &zw))
			break;
		poll(pfd, n, 10);
	}
	free(data);
}

/*
 * Sessions closed (their peers reset) while zero-copy sends of theirs are
 * in flight and their bytes still queued in the kernel: each is freed, and
 * every buffer comes back, only after its notification (ASan and UBSan in
 * the sanitized build check that nothing is touched after it is freed).
 */
Test(uring, send_zc_reset_in_flight_frees_everything, .timeout = 120)
{
	int fd[8];
	uint64_t n = 8;
	struct test_server ts;
	struct rb_stats st;

	need_feature("send zc");
	zc_server(&ts, 1, features);
	zc_fill(&ts, fd, n);
	for (size_t i = 0; i < n; i++) {
		setsockopt(fd[i], SOL_SOCKET, SO_LINGER, &(struct linger){.l_onoff = 1},
		           sizeof(struct linger));
		close(fd[i]);
	}
	th_wait_stats(&ts, all_closed, &n, "every session to close");
	th_wait_stats(&ts, zc_all_back, NULL, "every buffer and notification to come back");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.resets, n);
	th_server_stop(&ts);
	cr_expect_gt(rb__uring_test_counters.zc_more, 0);
	expect_zc_settled();
}

static void zc_short_deadline(struct rb_config *cfg)
{
	features(cfg);
	cfg->shutdown_timeout_ms = 100;
}

/* A stop whose deadline finds zero-copy bytes held for peers that do not
 * read: the worker exits cleanly (rb_server_run returns 0) without
 * resetting them, and what it sent still arrives, then a clean EOF (the
 * buffers the kernel still reads are left allocated, not reused). */
Test(uring, send_zc_stop_deadline, .timeout = 60)
{
	unsigned char buf[65536];
	int fd[4];

	need_feature("send zc");
	{
		struct test_server ts;
		zc_server(&ts, 1, zc_short_deadline);
		zc_fill(&ts, fd, 4);
		th_server_stop(&ts); /* asserts rb_server_run returned 0 */
	}
	for (size_t i = 0; i < 4; i++) {
		size_t got = 0;
		ssize_t r;
		th_set_nonblock(fd[i]);
		fcntl(fd[i], F_SETFL, fcntl(fd[i], F_GETFL) & ~O_NONBLOCK);
		while ((r = recv(fd[i], buf, sizeof(buf), 0)) > 0) {
			for (ssize_t j = 0; j < r; j++)
				cr_assert_eq(buf[j], 0, "byte %zu of connection %zu",
				             got + (size_t)j, i);
			got += (size_t)r;
		}
		cr_expect_eq(r, 0, "connection %zu: %s after %zu bytes (want a clean EOF)", i,
		             strerror(errno), got);
		cr_expect_gt(got, 0);
		close(fd[i]);
	}
}

/* Bad values: one line naming the value, exit 2. */
Test(uring, send_zc_bad_values)
{
	static const struct {
		const char *value, *why;
	} bad[] = {
	        {"abc", "expected a size such as 4096 or 16k, or off"},
	        {"-1", "expected a size such as 4096 or 16k, or off"},
	        {"16x", "expected a size such as 4096 or 16k, or off"},
	        {"", "expected a size such as 4096 or 16k, or off"},
	        {"Off", "expected a size such as 4096 or 16k, or off"},
	        {"99999999999999999999", "too large"},
	};
	char err[512], want[256];
	struct child ch;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		spawn_filtered(&ch, 0,
		               (const char *const[]){"--engine", "uring", "--uring-send-zc",
		                                     bad[i].value, NULL});
		cr_expect_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 2, "%s", bad[i].value);
		snprintf(want, sizeof(want), "rebound: invalid --uring-send-zc '%s': %s\n",
		         bad[i].value, bad[i].why);
		cr_expect_str_eq(err, want);
	}
}

/* 0, off and a k suffix are taken; the start-up line says what was chosen. */
Test(uring, send_zc_startup_line, .timeout = 60)
{
	static const struct {
		const char *value, *says;
	} ok[] = {{"0", "send zc: off"}, {"off", "send zc: off"}, {"16k", "send zc: 16384"}};
	char line[512], err[4096];
	struct child ch;

	need_feature("send zc");
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		spawn_filtered(&ch, 0,
		               (const char *const[]){"--engine", "uring", "--listen",
		                                     "tcp://127.0.0.1:0", "--uring-send-zc",
		                                     ok[i].value, NULL});
		read_startup(&ch, line, sizeof(line));
		cr_expect_not_null(strstr(line, ok[i].says), "%s: %s", ok[i].value, line);
		cr_assert_eq(kill(ch.pid, SIGTERM), 0);
		cr_expect_eq(child_exit(&ch, err, sizeof(err), NULL, 0), 0, "stderr: %s", err);
	}
}

#else /* !RB_HAVE_URING */

Test(uring, not_built)
{
	char why[256] = "";

	cr_assert_eq(rb_engine_available(RB_ENGINE_URING, why, sizeof(why)), -ENOTSUP);
	cr_assert_str_eq(why, "engine 'uring' is not available: rebound was built without "
	                      "liburing");
}

#endif
