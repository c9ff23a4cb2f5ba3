/* SPDX-License-Identifier: MIT */
/* UDP echo on every readiness engine: exact datagrams back to each sender. */
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

#include "helpers.h"

/* The copy mode does not apply to datagrams: one entry per poller. */
static size_t udp_params(struct engine_param **out)
{
	struct engine_param *all;
	size_t n = th_engine_params(&all), k = 0;

	for (size_t i = 0; i < n; i++)
		if (all[i].copy == RB_COPY_WRITEV && all[i].engine != RB_ENGINE_URING)
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
