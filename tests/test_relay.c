/* SPDX-License-Identifier: MIT */
/*
 * Relay mode (--forward): client -> rebound relay -> a second rebound echo
 * server (or a scripted upstream), on every engine and copy mode that
 * relays. Every byte is checked, and both servers' counters.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "helpers.h"

/* The engine configurations that relay (rb_engine_features says "relay"). */
static size_t relay_params(struct engine_param **out)
{
	struct engine_param *all;
	size_t n = th_engine_params(&all), k = 0;

	for (size_t i = 0; i < n; i++) {
		char feat[128] = "";
		rb_engine_features(all[i].engine, feat, sizeof(feat));
		if (strstr(feat, "relay"))
			all[k++] = all[i];
	}
	*out = all;
	return k;
}

#define RELAY_TEST(name, secs)                                                                     \
	ParameterizedTestParameters(relay, name)                                                   \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = relay_params(&p);                                                       \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, relay, name, .timeout = (secs))

static char forward_url[64];
static unsigned connect_timeout_ms = 5000;

static void relay_tweak(struct rb_config *cfg)
{
	cfg->forward = forward_url;
	cfg->connect_timeout_ms = connect_timeout_ms;
}

struct pair {
	struct test_server up;    /* the echo upstream */
	struct test_server relay; /* the relay under test */
};

static void relay_start_to(struct test_server *relay, const struct engine_param *p, int port)
{
	snprintf(forward_url, sizeof(forward_url), "tcp://127.0.0.1:%d", port);
	th_server_start(relay, p, relay_tweak);
}

static void pair_start(struct pair *pr, const struct engine_param *p)
{
	th_server_start(&pr->up, NULL, NULL);
	relay_start_to(&pr->relay, p, pr->up.port);
}

static void pair_stop(struct pair *pr)
{
	th_server_stop(&pr->relay);
	th_server_stop(&pr->up);
}

static bool all_closed(const struct rb_stats *st, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	return st->closed == want && st->active == 0;
}

/* Both servers saw conns connections carrying `bytes` each way, cleanly. */
static void expect_relayed(struct pair *pr, uint64_t conns, uint64_t bytes)
{
	struct rb_stats r, u;

	th_wait_stats(&pr->relay, all_closed, &conns, "every relayed session to close");
	th_wait_stats(&pr->up, all_closed, &conns, "every upstream connection to close");
	rb_server_stats(pr->relay.srv, &r);
	rb_server_stats(pr->up.srv, &u);
	cr_expect_eq(r.accepted, conns);
	cr_expect_eq(r.upstream_connects, conns);
	cr_expect_eq(r.upstream_failures, 0);
	cr_expect_eq(r.upstream_bytes_out, bytes, "to upstream %lu, want %lu",
	             (unsigned long)r.upstream_bytes_out, (unsigned long)bytes);
	cr_expect_eq(r.upstream_bytes_in, bytes, "from upstream %lu, want %lu",
	             (unsigned long)r.upstream_bytes_in, (unsigned long)bytes);
	cr_expect_eq(r.bytes_in, 2 * bytes);
	cr_expect_eq(r.bytes_out, 2 * bytes);
	cr_expect_eq(r.buffered, 0);
	cr_expect_eq(r.resets, 0);
	cr_expect_eq(r.connect_under_1ms + r.connect_under_10ms + r.connect_under_100ms +
	                     r.connect_under_1s + r.connect_over_1s,
	             conns);
	cr_expect_gt(r.connect_us, 0, "the connects' times added up");
	cr_expect_eq(u.accepted, conns);
	cr_expect_eq(u.bytes_in, bytes);
	cr_expect_eq(u.bytes_out, bytes);
	cr_expect_eq(u.resets, 0);
}

/* Payloads from 0 bytes to 16 MiB through the relay, one at a time. */
RELAY_TEST(payload_sizes, 120)
{
	static const size_t sizes[] = {0, 1, 100, 16385, 65536 + 3, 1048576 + 7, 16u << 20};
	const size_t n = sizeof(sizes) / sizeof(sizes[0]);
	unsigned char *data = malloc(16u << 20);
	struct pair pr;
	uint64_t total = 0;

	th_fill(data, 16u << 20, 11);
	pair_start(&pr, p);
	for (size_t i = 0; i < n; i++) {
		struct th_stream s = {.fd = th_connect(pr.relay.port),
		                      .data = data,
		                      .len = sizes[i],
		                      .max_piece = 100000,
		                      .rng = i + 1};
		th_run_streams(&s, 1);
		close(s.fd);
		total += sizes[i];
	}
	expect_relayed(&pr, n, total);
	pair_stop(&pr);
	free(data);
}

RELAY_TEST(concurrent_200, 120)
{
	enum { N = 200 };
	static struct th_stream s[N];
	unsigned char *data = malloc(1u << 20);
	struct pair pr;
	uint64_t rng = 7, total = 0;

	th_fill(data, 1u << 20, 12);
	pair_start(&pr, p);
	for (int i = 0; i < N; i++) {
		s[i] = (struct th_stream){.fd = th_connect(pr.relay.port),
		                          .data = data + (th_rand(&rng) % 1000),
		                          .len = th_rand(&rng) % 200000,
		                          .max_piece = 30000,
		                          .rng = (uint64_t)i + 100};
		total += s[i].len;
	}
	th_run_streams(s, N);
	for (int i = 0; i < N; i++)
		close(s[i].fd);
	expect_relayed(&pr, N, total);
	pair_stop(&pr);
	free(data);
}

/* ---- a scripted upstream: one connection, one script, in a thread ---- */

enum script {
	UP_HELLO_THEN_READ, /* send "hello", FIN, then read to EOF (counts the bytes) */
	UP_CLOSE_AT_ONCE,   /* accept and close: a FIN before anything */
	UP_RESET_AFTER,     /* read `n` bytes, then RST */
};

struct upstream {
	int lfd, port;
	enum script script;
	size_t n;
	size_t got; /* bytes read before EOF or the end of the script */
	pthread_t thread;
};

static void *upstream_main(void *arg)
{
	struct upstream *u = arg;
	unsigned char buf[65536];
	int fd = accept(u->lfd, NULL, NULL);
	ssize_t r;

	if (fd < 0)
		return NULL;
	switch (u->script) {
	case UP_HELLO_THEN_READ:
		if (send(fd, "hello", 5, MSG_NOSIGNAL) != 5)
			break;
		shutdown(fd, SHUT_WR);
		while ((r = read(fd, buf, sizeof(buf))) > 0)
			u->got += (size_t)r;
		break;
	case UP_CLOSE_AT_ONCE:
		break;
	case UP_RESET_AFTER:
		while (u->got < u->n && (r = read(fd, buf, sizeof(buf))) > 0)
			u->got += (size_t)r;
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &(struct linger){1, 0},
		           sizeof(struct linger));
		break;
	}
	close(fd);
	return NULL;
}

static int listen_local(int backlog, int *port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(fd, backlog), 0);
	getsockname(fd, (struct sockaddr *)&sin, &len);
	*port = ntohs(sin.sin_port);
	return fd;
}

static void upstream_start(struct upstream *u, enum script sc, size_t n)
{
	u->script = sc;
	u->n = n;
	u->got = 0;
	u->lfd = listen_local(8, &u->port);
	cr_assert_eq(pthread_create(&u->thread, NULL, upstream_main, u), 0);
}

static void upstream_join(struct upstream *u)
{
	pthread_join(u->thread, NULL);
	close(u->lfd);
}

/* Read exactly want bytes, then EOF; returns 0, or the errno that ended it. */
static int read_then_eof(int fd, const void *want, size_t len)
{
	unsigned char *got = malloc(len + 1);
	size_t off = 0;
	ssize_t r;

	while ((r = read(fd, got + off, len + 1 - off)) > 0)
		off += (size_t)r;
	if (r < 0) {
		free(got);
		return errno;
	}
	cr_assert_eq(off, len, "got %zu bytes before EOF, want %zu", off, len);
	cr_assert_eq(memcmp(got, want, len), 0);
	free(got);
	return 0;
}

/* The upstream half-closes first: its bytes and FIN reach the client,
 * while the client's bytes still all reach the upstream. */
RELAY_TEST(half_close_upstream_first, 60)
{
	const size_t len = 3u << 20;
	unsigned char *data = malloc(len);
	struct test_server relay;
	struct upstream u;
	struct rb_stats st;
	int fd;

	th_fill(data, len, 13);
	upstream_start(&u, UP_HELLO_THEN_READ, 0);
	relay_start_to(&relay, p, u.port);
	fd = th_connect(relay.port);
	cr_assert_eq(read_then_eof(fd, "hello", 5), 0);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, MSG_NOSIGNAL);
		cr_assert_gt(r, 0, "send: %s", strerror(errno));
		off += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	upstream_join(&u);
	cr_assert_eq(u.got, len, "the upstream got %zu of %zu bytes", u.got, len);
	close(fd);
	th_wait_stats(&relay, all_closed, &(uint64_t){1}, "the session to close");
	rb_server_stats(relay.srv, &st);
	cr_expect_eq(st.resets, 0);
	cr_expect_eq(st.upstream_bytes_out, len);
	cr_expect_eq(st.upstream_bytes_in, 5);
	th_server_stop(&relay);
	free(data);
}

/* An upstream that closes before anything: the client sees a clean EOF. */
RELAY_TEST(upstream_closes_early, 60)
{
	struct test_server relay;
	struct upstream u;
	struct rb_stats st;
	int fd;

	upstream_start(&u, UP_CLOSE_AT_ONCE, 0);
	relay_start_to(&relay, p, u.port);
	fd = th_connect(relay.port);
	cr_assert_eq(read_then_eof(fd, "", 0), 0);
	upstream_join(&u);
	close(fd);
	th_wait_stats(&relay, all_closed, &(uint64_t){1}, "the session to close");
	rb_server_stats(relay.srv, &st);
	cr_expect_eq(st.resets, 0);
	cr_expect_eq(st.upstream_connects, 1);
	th_server_stop(&relay);
}

/* The upstream resets mid-stream: the client gets an RST too. */
RELAY_TEST(reset_from_upstream, 60)
{
	const size_t len = 1u << 20;
	unsigned char *data = malloc(len);
	struct test_server relay;
	struct upstream u;
	struct rb_stats st;
	unsigned char buf[4096];
	char desc[96];
	ssize_t r;
	int fd;

	th_fill(data, len, 14);
	upstream_start(&u, UP_RESET_AFTER, 1000);
	relay_start_to(&relay, p, u.port);
	fd = th_connect(relay.port);
	th_set_nonblock(fd);
	cr_assert_gt(send(fd, data, len, MSG_NOSIGNAL), 0);
	upstream_join(&u);
	th_wait_stats(&relay, all_closed, &(uint64_t){1}, "the session to close");
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	cr_assert_eq(poll(&pfd, 1, 10000), 1);
	r = recv(fd, buf, sizeof(buf), 0);
	cr_assert_eq(r, -1, "recv returned %zd, not an RST", r);
	cr_assert_eq(errno, ECONNRESET, "recv: %s", strerror(errno));
	rb_server_stats(relay.srv, &st);
	th_engine_param_describe(p, desc, sizeof(desc));
	cr_expect_eq(st.resets, 1, "%s: resets %lu", desc, (unsigned long)st.resets);
	cr_expect_eq(st.buffered, 0, "%s: buffered %lu", desc, (unsigned long)st.buffered);
	close(fd);
	th_server_stop(&relay);
	free(data);
}

static bool upstream_reset_seen(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->resets == 1 && st->active == 0;
}

static bool upstream_got_bytes(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->bytes_in > 0;
}

/* The client resets mid-stream: the upstream gets an RST too. */
RELAY_TEST(reset_from_client, 60)
{
	const size_t len = 4u << 20;
	unsigned char *data = malloc(len);
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	struct pair pr;
	struct rb_stats st;
	int fd;

	th_fill(data, len, 15);
	pair_start(&pr, p);
	fd = th_connect(pr.relay.port);
	th_set_nonblock(fd);
	while (send(fd, data, len, MSG_NOSIGNAL) > 0)
		;
	th_wait_stats(&pr.up, upstream_got_bytes, NULL, "the upstream to get bytes");
	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
	th_wait_stats(&pr.relay, all_closed, &(uint64_t){1}, "the session to close");
	th_wait_stats(&pr.up, upstream_reset_seen, NULL, "the upstream to see an RST");
	rb_server_stats(pr.relay.srv, &st);
	cr_expect_eq(st.resets, 1);
	cr_expect_eq(st.buffered, 0);
	pair_stop(&pr);
	free(data);
}

struct cap_wait {
	uint64_t cap;
	bool splice;
};

static bool relay_paused(const struct rb_stats *st, void *arg)
{
	const struct cap_wait *cw = arg;

	if (cw->splice)
		return st->pauses > 0 && st->buffered > 0;
	return st->pauses > 0 && st->buffered >= cw->cap;
}

/*
 * A client that sends without reading: the upstream echoes, the relay's
 * upstream -> client flow stops at its cap, and then its reads from the
 * upstream; once the client reads, everything arrives intact.
 */
RELAY_TEST(slow_reader_bounded, 60)
{
	const size_t len = 8u << 20;
	unsigned char *data = malloc(len);
	struct pair pr;
	struct rb_stats st;
	struct cap_wait cw;
	size_t sent;
	int fd;

	th_fill(data, len, 16);
	pair_start(&pr, p);
	cw.splice = p->copy == RB_COPY_SPLICE;
	cw.cap = cw.splice ? pr.relay.cfg.pipe_size : pr.relay.cfg.conn_buffer;
	fd = th_connect_bufs(pr.relay.port, 65536, 65536);
	th_set_nonblock(fd);
	sent = th_send_until(&pr.relay, fd, data, len, relay_paused, &cw,
	                     "the relay to pause a flow at its cap");
	rb_server_stats(pr.relay.srv, &st);
	cr_assert_leq(st.peak_conn_buffered, cw.cap, "peak %lu over the cap %lu",
	              (unsigned long)st.peak_conn_buffered, (unsigned long)cw.cap);
	/* Two flows, each at most its cap. */
	cr_assert_leq(st.buffered, 2 * cw.cap);
	th_send_rest_and_verify(fd, data, len, sent);
	close(fd);
	rb_server_stats(pr.relay.srv, &st);
	cr_assert_leq(st.peak_conn_buffered, cw.cap);
	expect_relayed(&pr, 1, len);
	pair_stop(&pr);
	free(data);
}

static bool one_failure(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->upstream_failures == 1 && st->active == 0;
}

static void expect_reset(int fd)
{
	unsigned char b;
	ssize_t r = recv(fd, &b, 1, 0);

	cr_assert_eq(r, -1, "recv returned %zd, not an RST", r);
	cr_assert_eq(errno, ECONNRESET, "recv: %s", strerror(errno));
}

/* A refused upstream: the client gets an RST (never a clean EOF), counted. */
RELAY_TEST(upstream_refused, 60)
{
	struct test_server relay;
	struct rb_stats st;
	int port, lfd, fd;

	/* A port that was just ours and is closed now: refused. */
	lfd = listen_local(1, &port);
	close(lfd);
	relay_start_to(&relay, p, port);
	fd = th_connect(relay.port);
	th_wait_stats(&relay, one_failure, NULL, "the connect to fail");
	expect_reset(fd);
	close(fd);
	rb_server_stats(relay.srv, &st);
	cr_expect_eq(st.upstream_connects, 0);
	cr_expect_eq(st.resets, 1);
	th_server_stop(&relay);
}

/* An upstream that never answers (its backlog is full, so SYNs are
 * dropped): the connect times out after --connect-timeout. */
RELAY_TEST(upstream_timeout, 60)
{
	struct test_server relay;
	struct rb_stats st;
	int port, lfd, fd, filler[4];

	lfd = listen_local(0, &port);
	/* Fill the accept queue; nobody accepts. */
	for (int i = 0; i < 4; i++) {
		filler[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		connect(filler[i], (struct sockaddr *)&sin, sizeof(sin));
	}
	connect_timeout_ms = 300;
	relay_start_to(&relay, p, port);
	fd = th_connect(relay.port);
	th_wait_stats(&relay, one_failure, NULL, "the connect to time out");
	expect_reset(fd);
	close(fd);
	rb_server_stats(relay.srv, &st);
	cr_expect_eq(st.upstream_connects, 0);
	th_server_stop(&relay);
	for (int i = 0; i < 4; i++)
		close(filler[i]);
	close(lfd);
}

static bool read_all_while_connecting(const struct rb_stats *st, void *arg)
{
	return st->bytes_in == *(uint64_t *)arg && st->upstream_connects == 0;
}

/*
 * Bytes sent before the upstream is connected wait in the flow: the upstream's
 * accept queue is full, so the relay's SYN is dropped until the test makes
 * room; by then the relay has read everything the client sent.
 */
RELAY_TEST(bytes_wait_for_the_connect, 60)
{
	const size_t len = 200000;
	unsigned char *data = malloc(len), *got = malloc(len + 1);
	struct test_server relay;
	int port, lfd, fd, filler[4];
	uint64_t want = len;
	size_t off = 0;

	th_fill(data, len, 17);
	lfd = listen_local(0, &port);
	for (int i = 0; i < 4; i++) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		filler[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(filler[i], (struct sockaddr *)&sin, sizeof(sin));
	}
	connect_timeout_ms = 30000;
	relay_start_to(&relay, p, port);
	fd = th_connect(relay.port);
	for (size_t o = 0; o < len;) {
		ssize_t r = send(fd, data + o, len - o, MSG_NOSIGNAL);
		cr_assert_gt(r, 0);
		o += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	th_wait_stats(&relay, read_all_while_connecting, &want,
	              "the relay to read everything while connecting");
	/* Make room: the fillers go; their queued connections read as EOF. */
	for (int i = 0; i < 4; i++)
		close(filler[i]);
	for (;;) {
		int a = accept(lfd, NULL, NULL);
		ssize_t r;
		cr_assert_geq(a, 0, "accept: %s", strerror(errno));
		while ((r = read(a, got + off, len + 1 - off)) > 0)
			off += (size_t)r;
		close(a);
		if (off > 0)
			break; /* the relay's connection: everything, then its FIN */
	}
	cr_assert_eq(off, len, "the upstream got %zu of %zu bytes", off, len);
	cr_assert_eq(memcmp(got, data, len), 0);
	cr_assert_eq(read_then_eof(fd, "", 0), 0);
	close(fd);
	th_wait_stats(&relay, all_closed, &(uint64_t){1}, "the session to close");
	th_server_stop(&relay);
	close(lfd);
	free(data);
	free(got);
}
