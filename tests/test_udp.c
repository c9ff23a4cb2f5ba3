/* SPDX-License-Identifier: MIT */
/*
 * UDP echo on every engine that serves it: exact datagrams back to each
 * sender. The readiness engines (one entry per poller) and uring with its
 * features on and all off; then what only uring has (its buffer ring
 * running dry, a datagram larger than a buffer, the bound on sends).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "engines.h"
#include "helpers.h"
#include "rb_config.h"

#if RB_HAVE_URING
#include "uring_udp.h"
#endif

/* The copy mode does not apply to datagrams: one entry per poller; uring
 * with every feature on and with all off (bundles, incremental buffers and
 * batching are the streams'; the wait is shared). */
static size_t udp_params(struct engine_param **out)
{
	struct engine_param *all;
	size_t n = th_engine_params(&all), k = 0;

	for (size_t i = 0; i < n; i++)
		if (all[i].copy == RB_COPY_WRITEV && all[i].send_zc == 0 &&
		    (rb__engine_find(all[i].engine)->caps & RB_CAP_UDP) &&
		    (all[i].engine != RB_ENGINE_URING || all[i].uring_off == 0 ||
		     all[i].uring_off == (RB_URING_BUNDLE | RB_URING_INC | RB_URING_BATCH)))
			all[k++] = all[i];
	*out = all;
	return k;
}

#define UDP_TEST(name)                                                                             \
	ParameterizedTestParameters(udp, name)                                                     \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = udp_params(&p);                                                         \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, udp, name, .timeout = 60)

static void udp_listener(struct rb_config *cfg)
{
	cfg->listen[0] = "udp://127.0.0.1:0";
}

static int udp_client(int port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), big = 4 << 20;

	cr_assert_geq(fd, 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	return fd;
}

static void recv_exact(int fd, const unsigned char *want, size_t len)
{
	static unsigned char got[70000];
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	cr_assert_eq(poll(&pfd, 1, 10000), 1, "no echo for a %zu-byte datagram", len);
	ssize_t r = recv(fd, got, sizeof(got), 0);
	cr_assert_eq(r, (ssize_t)len, "got %zd bytes for a %zu-byte datagram", r, len);
	cr_assert(memcmp(got, want, len) == 0, "%zu-byte datagram differs", len);
}

static bool all_echoed(const struct rb_stats *st, void *arg)
{
	return st->datagrams_out == *(uint64_t *)arg;
}

/* Sizes up to the IPv4 maximum, zero-length included, each back intact. */
UDP_TEST(sizes)
{
	static const size_t sizes[] = {0, 1, 2, 512, 1472, 1473, 9000, 65507, 0};
	static unsigned char data[65507];
	struct test_server ts;
	struct rb_stats st;
	uint64_t total = 0, n = sizeof(sizes) / sizeof(sizes[0]);
	int fd;

	th_fill(data, sizeof(data), 21);
	th_server_start(&ts, p, udp_listener);
	fd = udp_client(ts.port);
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(send(fd, data, sizes[i], 0), (ssize_t)sizes[i]);
		recv_exact(fd, data, sizes[i]);
		total += sizes[i];
	}
	th_wait_stats(&ts, all_echoed, &n, "every datagram to be counted");
	rb_server_stats(ts.srv, &st);
	cr_assert_eq(st.datagrams_in, n);
	cr_assert_eq(st.bytes_in, total);
	cr_assert_eq(st.bytes_out, total);
	cr_assert_eq(st.datagram_drops, 0);
	cr_assert_eq(st.accepted, 0);
	close(fd);
	th_server_stop(&ts);
}

/* Several senders with bursts in flight: each gets its own datagrams, in order. */
UDP_TEST(many_senders)
{
	enum { CLIENTS = 16, ROUNDS = 20, BURST = 16 };
	static unsigned char data[1 << 16];
	struct test_server ts;
	int fds[CLIENTS];
	uint64_t n = (uint64_t)CLIENTS * ROUNDS * BURST;

	th_fill(data, sizeof(data), 22);
	th_server_start(&ts, p, udp_listener);
	for (int c = 0; c < CLIENTS; c++)
		fds[c] = udp_client(ts.port);
	for (int r = 0; r < ROUNDS; r++) {
		for (int c = 0; c < CLIENTS; c++)
			for (int b = 0; b < BURST; b++) {
				size_t off = (size_t)(c * 997 + r * 31 + b * 7),
				       len = 100 + (size_t)b * 13;
				cr_assert_eq(send(fds[c], data + off, len, 0), (ssize_t)len);
			}
		for (int c = 0; c < CLIENTS; c++)
			for (int b = 0; b < BURST; b++) {
				size_t off = (size_t)(c * 997 + r * 31 + b * 7),
				       len = 100 + (size_t)b * 13;
				recv_exact(fds[c], data + off, len);
			}
	}
	th_wait_stats(&ts, all_echoed, &n, "every datagram to be counted");
	for (int c = 0; c < CLIENTS; c++)
		close(fds[c]);
	th_server_stop(&ts);
}

#if RB_HAVE_URING
/* ---- uring only ---- */

static const struct engine_param uring_param = {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV};

static void need_uring(void)
{
	char why[256] = "";

	if (rb_engine_available(RB_ENGINE_URING, why, sizeof(why)) < 0)
		cr_skip_test("io_uring cannot run on this machine: %s", why);
}

static bool drops_at_least(const struct rb_stats *st, void *arg)
{
	return st->datagram_drops >= *(uint64_t *)arg;
}

static bool settled(const struct rb_stats *st, void *arg)
{
	return st->datagrams_in == *(uint64_t *)arg &&
	       st->datagrams_out + st->datagram_drops == *(uint64_t *)arg && st->buffered == 0;
}

/*
 * A ring of two buffers and 64 datagrams already waiting when the worker
 * starts: the multishot receive takes two, ends with ENOBUFS (a CQE without
 * IORING_CQE_F_MORE) and is armed again as the sends give buffers back,
 * until every datagram has come back, in order, none lost.
 */
Test(udp, uring_buffers_run_dry, .timeout = 60)
{
	enum { N = 64 };
	static unsigned char data[N * 100];
	struct test_server ts;
	struct rb_stats st;
	uint64_t n = N;
	int fd;

	need_uring();
	th_fill(data, sizeof(data), 23);
	rb__uring_udp_test = (struct rb_uring_udp_test){.bufs = 2};
	th_server_create(&ts, &uring_param, udp_listener);
	fd = udp_client(ts.port);
	for (int i = 0; i < N; i++)
		cr_assert_eq(send(fd, data + i * 100, 100, 0), 100);
	th_server_run(&ts);
	for (int i = 0; i < N; i++)
		recv_exact(fd, data + i * 100, 100);
	th_wait_stats(&ts, all_echoed, &n, "every datagram to be counted");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.datagrams_in, N);
	cr_expect_eq(st.datagram_drops, 0);
	cr_expect_eq(st.bytes_out, sizeof(data));
	cr_expect_geq(rb__uring_udp_test.enobufs, 1, "the ring never ran dry");
	cr_expect_geq(rb__uring_udp_test.rearms, rb__uring_udp_test.enobufs,
	              "%lu receives ended by ENOBUFS, %lu armed again",
	              (unsigned long)rb__uring_udp_test.enobufs,
	              (unsigned long)rb__uring_udp_test.rearms);
	cr_expect_leq(rb__uring_udp_test.peak_sends, 2);
	/* The socket still serves. */
	cr_assert_eq(send(fd, "after", 5, 0), 5);
	recv_exact(fd, (const unsigned char *)"after", 5);
	close(fd);
	th_server_stop(&ts);
	rb__uring_udp_test = (struct rb_uring_udp_test){0};
}

/* A datagram larger than a buffer's room arrives truncated: not answered,
 * counted as a drop; the socket goes on with the next one. */
Test(udp, uring_truncated_not_answered, .timeout = 60)
{
	static unsigned char data[2000];
	struct test_server ts;
	struct rb_stats st;
	uint64_t one = 1, three = 3;
	int fd;

	need_uring();
	th_fill(data, sizeof(data), 24);
	rb__uring_udp_test = (struct rb_uring_udp_test){.payload = 1024};
	th_server_start(&ts, &uring_param, udp_listener);
	fd = udp_client(ts.port);
	cr_assert_eq(send(fd, data, 1025, 0), 1025);
	th_wait_stats(&ts, drops_at_least, &one, "the truncated datagram to be dropped");
	cr_assert_eq(send(fd, data, 1024, 0), 1024);
	recv_exact(fd, data, 1024);
	cr_assert_eq(send(fd, data, 0, 0), 0);
	recv_exact(fd, data, 0);
	th_wait_stats(&ts, settled, &three, "every datagram to be counted");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.datagram_drops, 1);
	cr_expect_eq(st.datagrams_out, 2);
	cr_expect_eq(st.bytes_out, 1024);
	cr_expect_eq(recv(fd, data, sizeof(data), MSG_DONTWAIT), -1, "an answer to the 1025 bytes");
	close(fd);
	th_server_stop(&ts);
	rb__uring_udp_test = (struct rb_uring_udp_test){0};
}

/*
 * One send in flight per socket at most: of 16 datagrams waiting at start,
 * those whose receive CQE comes while the send is in flight are dropped and
 * counted, never queued; the ones answered come back exact and in order.
 */
Test(udp, uring_send_bound_drops, .timeout = 60)
{
	enum { N = 16 };
	static unsigned char data[N * 50], got[100];
	struct test_server ts;
	struct rb_stats st;
	uint64_t n = N;
	int fd, next = 0;

	need_uring();
	th_fill(data, sizeof(data), 25);
	rb__uring_udp_test = (struct rb_uring_udp_test){.sends = 1};
	th_server_create(&ts, &uring_param, udp_listener);
	fd = udp_client(ts.port);
	for (int i = 0; i < N; i++)
		cr_assert_eq(send(fd, data + i * 50, 50, 0), 50);
	th_server_run(&ts);
	th_wait_stats(&ts, settled, &n, "every datagram to be answered or dropped");
	rb_server_stats(ts.srv, &st);
	cr_expect_geq(st.datagram_drops, 1, "no datagram found the bound");
	cr_expect_eq(rb__uring_udp_test.peak_sends, 1);
	for (uint64_t k = 0; k < st.datagrams_out; k++) {
		ssize_t r = recv(fd, got, sizeof(got), MSG_DONTWAIT);
		cr_assert_eq(r, 50, "answer %lu: %zd", (unsigned long)k, r);
		while (next < N && memcmp(got, data + next * 50, 50) != 0)
			next++;
		cr_assert_lt(next, N, "answer %lu is none of the datagrams, or out of order",
		             (unsigned long)k);
		next++;
	}
	cr_expect_eq(recv(fd, got, sizeof(got), MSG_DONTWAIT), -1, "more answers than counted");
	close(fd);
	th_server_stop(&ts);
	rb__uring_udp_test = (struct rb_uring_udp_test){0};
}
#endif
