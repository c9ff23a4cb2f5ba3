/* SPDX-License-Identifier: MIT */
/*
 * End-to-end echo suite against a real server on loopback. Every test runs
 * against every built engine configuration (th_engine_params).
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/un.h>
#include <errno.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

#define ECHO_TEST(name, secs)                                                                      \
	ParameterizedTestParameters(echo, name)                                                    \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = th_engine_params(&p);                                                   \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, echo, name, .timeout = (secs))

static bool all_closed(const struct rb_stats *st, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	return st->closed == want && st->active == 0;
}

static void expect_totals(struct test_server *ts, uint64_t conns, uint64_t bytes)
{
	struct rb_stats st;

	th_wait_stats(ts, all_closed, &conns, "every connection to close");
	rb_server_stats(ts->srv, &st);
	cr_expect_eq(st.accepted, conns, "accepted %lu, want %lu", (unsigned long)st.accepted,
	             (unsigned long)conns);
	cr_expect_eq(st.bytes_in, bytes, "bytes_in %lu, want %lu", (unsigned long)st.bytes_in,
	             (unsigned long)bytes);
	cr_expect_eq(st.bytes_out, bytes, "bytes_out %lu, want %lu", (unsigned long)st.bytes_out,
	             (unsigned long)bytes);
	cr_expect_eq(st.buffered, 0);
	cr_expect_eq(st.resets, 0);
}

/* Payloads from 0 bytes to 16 MiB, sent in random-sized pieces, one at a time. */
ECHO_TEST(payload_sizes, 120)
{
	static const size_t sizes[] = {0,     1,         100,         16383,    16384,
	                               16385, 65536 + 3, 1048576 + 7, 16u << 20};
	const size_t n = sizeof(sizes) / sizeof(sizes[0]);
	struct test_server ts;
	uint64_t total = 0;
	unsigned char *data = malloc(16u << 20);

	th_fill(data, 16u << 20, 42);
	th_server_start(&ts, p, NULL);
	for (size_t i = 0; i < n; i++) {
		struct th_stream s = {
		        .fd = th_connect(ts.port),
		        .data = data,
		        .len = sizes[i],
		        .max_piece = i % 2 ? 7 + i * 1000 : 200000,
		        .rng = i,
		};
		th_run_streams(&s, 1);
		close(s.fd);
		total += sizes[i];
	}
	expect_totals(&ts, n, total);
	th_server_stop(&ts);
	free(data);
}

/* 200 clients at once, each with its own stream. */
ECHO_TEST(concurrent_200, 120)
{
	enum { N = 200 };
	struct th_stream s[N];
	struct test_server ts;
	size_t total = 0;
	unsigned char *data = malloc(1u << 20);

	th_fill(data, 1u << 20, 7);
	th_server_start(&ts, p, NULL);
	for (size_t i = 0; i < N; i++) {
		s[i] = (struct th_stream){
		        .fd = th_connect(ts.port),
		        .data = data + i * 997,
		        .len = 20000 + i * 1531,
		        .max_piece = 1 + i * 97,
		        .rng = i,
		};
		total += s[i].len;
	}
	th_run_streams(s, N);
	for (size_t i = 0; i < N; i++)
		close(s[i].fd);
	expect_totals(&ts, N, total);
	th_server_stop(&ts);
	free(data);
}

static void read_exact_then_eof(int fd, const unsigned char *want, size_t len)
{
	unsigned char *got = malloc(len + 1);
	size_t n = 0;

	for (;;) {
		ssize_t r = recv(fd, got + n, len + 1 - n, 0);
		cr_assert_geq(r, 0, "recv: %s", strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
		cr_assert_leq(n, len, "more bytes than were sent");
	}
	cr_assert_eq(n, len, "got %zu of %zu bytes before EOF", n, len);
	cr_assert(memcmp(got, want, len) == 0, "echoed bytes differ");
	free(got);
}

/* Send everything, half-close before reading a byte: all of it, then EOF. */
ECHO_TEST(half_close, 60)
{
	const size_t len = 1u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	int fd;

	th_fill(data, len, 3);
	th_server_start(&ts, p, NULL);
	fd = th_connect(ts.port);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, MSG_NOSIGNAL);
		cr_assert_gt(r, 0, "send: %s", strerror(errno));
		off += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	read_exact_then_eof(fd, data, len);
	close(fd);
	expect_totals(&ts, 1, len);
	th_server_stop(&ts);
	free(data);
}

struct cap_wait {
	uint64_t cap;
	bool splice;
};

/*
 * The server has stopped reading this connection: with writev exactly at its
 * cap; with splice, with the pipe full (its byte count is not exact: a pipe
 * runs out of page slots before bytes when skbs fill pages partly).
 */
static bool at_cap(const struct rb_stats *st, void *arg)
{
	const struct cap_wait *cw = arg;

	if (cw->splice)
		return st->pauses > 0 && st->buffered > 0;
	return st->buffered == cw->cap && st->pauses > 0;
}

static bool all_in(const struct rb_stats *st, void *arg)
{
	return st->bytes_in == *(uint64_t *)arg;
}

/*
 * sockmap cannot pause a connection: no verdict leaves bytes queued, so the
 * sender is never held back, and the kernel keeps the echo the peer does
 * not read on the socket's psock. Within the cap (past it the connection
 * is reset: test_sockmap.c), everything still comes back once the peer
 * reads, and the psock never held more than the cap.
 */
static void slow_reader_within_cap(struct test_server *ts, const unsigned char *data, size_t len)
{
	uint64_t want = len;
	struct rb_stats st;
	size_t sent = 0;
	int fd = th_connect_bufs(ts->port, 65536, 65536);

	cr_assert_lt(len, ts->cfg.conn_buffer, "the test needs a cap above %zu", len);
	th_set_nonblock(fd);
	while (sent < len) {
		ssize_t r = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
		if (r > 0) {
			sent += (size_t)r;
			continue;
		}
		cr_assert_eq(errno, EAGAIN, "send: %s", strerror(errno));
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		cr_assert_gt(poll(&pfd, 1, 20000), 0, "the server stopped taking input at %zu",
		             sent);
	}
	th_wait_stats(ts, all_in, &want, "every byte to pass the verdict");
	rb_server_stats(ts->srv, &st);
	cr_assert_gt(st.peak_conn_buffered, 0, "the psock never held echo for the non-reader");
	cr_assert_leq(st.peak_conn_buffered, ts->cfg.conn_buffer, "peak %lu over the cap %zu",
	              (unsigned long)st.peak_conn_buffered, ts->cfg.conn_buffer);
	cr_assert_eq(st.resets, 0);
	th_send_rest_and_verify(fd, data, len, sent);
	close(fd);
	expect_totals(ts, 1, len);
}

/*
 * A client sends 8 MiB without reading: the server's buffer for it stops at
 * the cap, then everything comes back intact once it reads.
 */
ECHO_TEST(slow_reader_bounded, 60)
{
	const size_t len = 8u << 20;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	struct cap_wait cw;
	size_t sent;
	int small = 65536, fd;

	th_fill(data, len, 99);
	th_server_start(&ts, p, NULL);
	if (p->engine == RB_ENGINE_SOCKMAP) {
		slow_reader_within_cap(&ts, data, len);
		th_server_stop(&ts);
		free(data);
		return;
	}
	cw.splice = p->copy == RB_COPY_SPLICE;
	/* With splice the pipe is the buffer: 1 MiB where fs.pipe-max-size allows. */
	cw.cap = cw.splice ? ts.cfg.pipe_size : ts.cfg.conn_buffer;
	/* Small client buffers, so the server, not the kernel, holds the backlog. */
	fd = th_connect_bufs(ts.port, small, small);
	th_set_nonblock(fd);
	/* Write, never read, until the server reports it stopped reading. */
	sent = th_send_until(&ts, fd, data, len, at_cap, &cw, "the connection to pause at its cap");
	rb_server_stats(ts.srv, &st);
	if (!cw.splice)
		cr_assert_eq(st.buffered, cw.cap, "buffered %lu, cap %lu",
		             (unsigned long)st.buffered, (unsigned long)cw.cap);
	cr_assert_leq(st.peak_conn_buffered, cw.cap, "peak %lu over the cap %lu",
	              (unsigned long)st.peak_conn_buffered, (unsigned long)cw.cap);
	/* Whether or not the kernel's buffers took all 8 MiB, the server paused:
	 * at_cap() held, so the cap, not the sender, bounded its memory. */

	/* Now read (and finish sending): every byte comes back in order. */
	th_send_rest_and_verify(fd, data, len, sent);
	rb_server_stats(ts.srv, &st);
	cr_assert_leq(st.peak_conn_buffered, cw.cap);
	close(fd);
	expect_totals(&ts, 1, len);
	th_server_stop(&ts);
	free(data);
}

/* A client resets mid-stream: the server closes it, counts it, keeps serving. */
ECHO_TEST(reset_mid_stream, 60)
{
	const size_t len = 4u << 20;
	unsigned char *data = malloc(len);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	struct test_server ts;
	struct rb_stats st;
	uint64_t one = 1;
	char desc[96];
	int fd;

	th_fill(data, len, 5);
	th_server_start(&ts, p, NULL);
	fd = th_connect(ts.port);
	th_set_nonblock(fd);
	/* Fill the pipeline without reading, then abort with RST. */
	while (send(fd, data, len, MSG_NOSIGNAL) > 0)
		;
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	th_wait_stats(&ts, all_closed, &one, "the reset connection to close");
	rb_server_stats(ts.srv, &st);
	th_engine_param_describe(p, desc, sizeof(desc));
	cr_assert_eq(st.resets, 1, "%s: resets %lu", desc, (unsigned long)st.resets);
	cr_assert_eq(st.buffered, 0, "%s: buffered %lu", desc, (unsigned long)st.buffered);

	/* Still healthy. */
	struct th_stream s = {.fd = th_connect(ts.port), .data = data, .len = 300000, .rng = 1};
	th_run_streams(&s, 1);
	close(s.fd);
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.accepted, 2);
	th_wait_stats(&ts, all_closed, &(uint64_t){2}, "both connections to close");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.resets, 1);
	cr_assert_eq(st.buffered, 0);
	th_server_stop(&ts);
	free(data);
}

static void small_budget(struct rb_config *cfg)
{
	cfg->read_budget = 16384;
}

/*
 * Two fast senders and a slow ping-pong client: the slow one finishes all its
 * round trips while the fast ones are still streaming, and the fast ones are
 * requeued by the budget instead of being drained to exhaustion.
 */
ECHO_TEST(fairness, 120)
{
	const size_t fast_len = 96u << 20;
	unsigned char *data = malloc(fast_len);
	struct th_stream fast[2];
	struct test_server ts;
	struct rb_stats st;
	struct pollfd pfd[3];
	unsigned char ping[100], pong[100];
	size_t fast_done_bytes[2] = {0, 0};
	int pings = 0, slow;
	size_t pong_n = 0;
	bool ping_out = false;

	th_fill(data, fast_len, 11);
	th_fill(ping, sizeof(ping), 12);
	th_server_start(&ts, p, small_budget);
	for (int i = 0; i < 2; i++) {
		fast[i] = (struct th_stream){
		        .fd = th_connect(ts.port), .data = data, .len = fast_len};
		th_set_nonblock(fast[i].fd);
	}
	slow = th_connect(ts.port);
	th_set_nonblock(slow);
	unsigned char *sink = malloc(1u << 20);
	/* Run all three until the slow client completes 30 round trips. */
	while (pings < 30) {
		for (int i = 0; i < 2; i++) {
			pfd[i].fd = fast[i].fd;
			pfd[i].events = POLLIN | POLLOUT;
		}
		pfd[2].fd = slow;
		pfd[2].events = ping_out ? POLLIN : POLLOUT;
		cr_assert_gt(poll(pfd, 3, 20000), 0, "stalled after %d pings", pings);
		for (int i = 0; i < 2; i++) {
			if (pfd[i].revents & POLLOUT && fast[i].sent < fast_len) {
				ssize_t r = send(fast[i].fd, data + fast[i].sent,
				                 fast_len - fast[i].sent > 262144
				                         ? 262144
				                         : fast_len - fast[i].sent,
				                 MSG_NOSIGNAL);
				if (r > 0)
					fast[i].sent += (size_t)r;
			}
			if (pfd[i].revents & POLLIN) {
				ssize_t r = recv(fast[i].fd, sink, 1u << 20, 0);
				if (r > 0) {
					cr_assert(memcmp(sink, data + fast_done_bytes[i],
					                 (size_t)r) == 0,
					          "fast stream %d corrupted", i);
					fast_done_bytes[i] += (size_t)r;
				}
			}
		}
		if (!ping_out && (pfd[2].revents & POLLOUT)) {
			cr_assert_eq(send(slow, ping, sizeof(ping), MSG_NOSIGNAL), 100);
			ping_out = true;
			pong_n = 0;
		} else if (ping_out && (pfd[2].revents & POLLIN)) {
			ssize_t r = recv(slow, pong + pong_n, sizeof(pong) - pong_n, 0);
			cr_assert_gt(r, 0);
			pong_n += (size_t)r;
			if (pong_n == sizeof(pong)) {
				cr_assert(memcmp(ping, pong, sizeof(ping)) == 0);
				ping_out = false;
				pings++;
			}
		}
	}
	cr_assert(fast_done_bytes[0] < fast_len && fast_done_bytes[1] < fast_len,
	          "the fast streams finished before the slow client's 30 round trips");
	rb_server_stats(ts.srv, &st);
	/* sockmap has no read budget: the kernel runs each socket's verdicts. */
	if (p->engine != RB_ENGINE_SOCKMAP)
		cr_assert_gt(st.requeues, 0, "no connection was requeued by the read budget");
	for (int i = 0; i < 2; i++)
		close(fast[i].fd);
	close(slow);
	th_wait_stats(&ts, all_closed, &(uint64_t){3}, "all connections to close");
	th_server_stop(&ts);
	free(sink);
	free(data);
}

static bool idle_settled(const struct rb_stats *st, void *arg)
{
	return st->active == *(uint64_t *)arg && st->buffered == 0;
}

/* Idle connections hold no chunk: buffers are allocated lazily. */
ECHO_TEST(idle_connections_hold_no_memory, 60)
{
	enum { N = 100 };
	struct test_server ts;
	struct rb_stats st;
	int fds[N];
	unsigned char b[512];

	th_fill(b, sizeof(b), 1);
	th_server_start(&ts, p, NULL);
	for (int i = 0; i < N; i++) {
		fds[i] = th_connect(ts.port);
		/* One round trip each, then idle. */
		cr_assert_eq(send(fds[i], b, sizeof(b), 0), (ssize_t)sizeof(b));
		unsigned char got[512];
		size_t n = 0;
		while (n < sizeof(got)) {
			ssize_t r = recv(fds[i], got + n, sizeof(got) - n, 0);
			cr_assert_gt(r, 0);
			n += (size_t)r;
		}
	}
	/* The echo can reach us a moment before the server accounts its write. */
	th_wait_stats(&ts, idle_settled, &(uint64_t){N}, "all connections idle");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.active, N);
	cr_assert_eq(st.buffered, 0);
	/* Chunks in existence are at most the idle cache, not one per connection. */
	cr_assert_leq(st.chunks_allocated, 4, "%lu chunks allocated for %d idle connections",
	              (unsigned long)st.chunks_allocated, N);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	th_server_stop(&ts);
}

static char unix_url[108];

static void v6_and_unix(struct rb_config *cfg)
{
	snprintf(unix_url, sizeof(unix_url), "unix:@rebound-test-%d", (int)getpid());
	cfg->listen[0] = "tcp://[::1]:0";
	cfg->listen[1] = unix_url;
	cfg->n_listen = 2;
}

static int connect_to(int family, const struct sockaddr *sa, socklen_t len)
{
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	cr_assert_eq(connect(fd, sa, len), 0, "connect: %s", strerror(errno));
	return fd;
}

static void v6_only(struct rb_config *cfg)
{
	cfg->listen[0] = "tcp://[::1]:0";
}

/* sockmap serves TCP only: IPv6 echoes, a UNIX listener is refused clearly. */
static void sockmap_v6_and_unix(const struct engine_param *p, const unsigned char *data, size_t len)
{
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	struct test_server ts;
	struct rb_server *srv;
	struct rb_config cfg;
	char err[256] = "";

	th_server_start(&ts, p, v6_only);
	rb_config_init(&cfg);
	v6_and_unix(&cfg);
	cfg.engine = p->engine;
	cr_assert_eq(rb_server_create(&cfg, &srv, err, sizeof(err)), -EINVAL);
	cr_assert(strstr(err, "': the sockmap engine does not serve UNIX sockets"), "%s", err);
	s6.sin6_port = htons((uint16_t)ts.port);
	struct th_stream s = {.fd = connect_to(AF_INET6, (struct sockaddr *)&s6, sizeof(s6)),
	                      .data = data,
	                      .len = len,
	                      .rng = 1};
	th_run_streams(&s, 1);
	close(s.fd);
	expect_totals(&ts, 1, len);
	th_server_stop(&ts);
}

/* The IPv6 and UNIX-socket listeners echo like the IPv4 one. */
ECHO_TEST(ipv6_and_unix_listeners, 60)
{
	const size_t len = 2u << 20;
	unsigned char *data = malloc(len);
	struct sockaddr_in6 s6 = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	struct sockaddr_un su = {.sun_family = AF_UNIX};
	struct test_server ts;
	struct th_stream s[2];
	const char *name;

	th_fill(data, len, 66);
	if (p->engine == RB_ENGINE_SOCKMAP) {
		sockmap_v6_and_unix(p, data, len);
		free(data);
		return;
	}
	th_server_start(&ts, p, v6_and_unix);
	s6.sin6_port = htons((uint16_t)ts.port);
	name = unix_url + 5; /* "@rebound-test-PID": abstract, leading NUL */
	memcpy(su.sun_path + 1, name + 1, strlen(name) - 1);
	s[0] = (struct th_stream){.fd = connect_to(AF_INET6, (struct sockaddr *)&s6, sizeof(s6)),
	                          .data = data,
	                          .len = len,
	                          .rng = 1};
	s[1] = (struct th_stream){
	        .fd = connect_to(
	                AF_UNIX, (struct sockaddr *)&su,
	                (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name))),
	        .data = data + 1,
	        .len = len - 1,
	        .rng = 2};
	th_run_streams(s, 2);
	close(s[0].fd);
	close(s[1].fd);
	expect_totals(&ts, 2, 2 * len - 1);
	th_server_stop(&ts);
	free(data);
}

static void two_threads(struct rb_config *cfg)
{
	cfg->threads = 2;
}

/* Two workers share the listeners: every stream intact, totals summed. */
ECHO_TEST(two_workers, 120)
{
	enum { N = 64 };
	struct th_stream s[N];
	struct test_server ts;
	size_t total = 0;
	unsigned char *data = malloc(1u << 20);

	th_fill(data, 1u << 20, 8);
	th_server_start(&ts, p, two_threads);
	for (size_t i = 0; i < N; i++) {
		s[i] = (struct th_stream){.fd = th_connect(ts.port),
		                          .data = data + i,
		                          .len = 100000 + i * 4099,
		                          .max_piece = 3 + i * 301,
		                          .rng = i};
		total += s[i].len;
	}
	th_run_streams(s, N);
	for (size_t i = 0; i < N; i++)
		close(s[i].fd);
	expect_totals(&ts, N, total);
	th_server_stop(&ts);
	free(data);
}

/*
 * The counters that explain a wake-up (issue 18): a ping-pong is served by
 * readiness events or completions (a read loop may also find the next
 * message without one), at most a few per message, and the events that moved
 * no byte are some of them. Loose bounds on counts, never timings.
 */
ECHO_TEST(event_counts, 60)
{
	enum { N = 300, SIZE = 100 };
	unsigned char msg[SIZE], got[SIZE];
	struct test_server ts;
	struct rb_stats st;
	int fd;

	th_server_start(&ts, p, NULL);
	fd = th_connect(ts.port);
	for (unsigned i = 0; i < N; i++) {
		size_t have = 0;
		th_fill(msg, SIZE, i);
		cr_assert_eq(send(fd, msg, SIZE, MSG_NOSIGNAL), (ssize_t)SIZE);
		while (have < SIZE) {
			ssize_t r = recv(fd, got + have, SIZE - have, 0);
			cr_assert_gt(r, 0, "round %u", i);
			have += (size_t)r;
		}
		cr_assert_arr_eq(got, msg, SIZE, "round %u", i);
	}
	close(fd);
	expect_totals(&ts, 1, (uint64_t)N * SIZE);
	rb_server_stats(ts.srv, &st);
	cr_expect_gt(st.events, 0);
	cr_expect_leq(st.events, 4 * N + 50, "%lu events for %d messages", (unsigned long)st.events,
	              N);
	cr_expect_gt(st.wakeups, 0);
	cr_expect_leq(st.idle_events, st.events, "%lu idle events of %lu",
	              (unsigned long)st.idle_events, (unsigned long)st.events);
	th_server_stop(&ts);
}
