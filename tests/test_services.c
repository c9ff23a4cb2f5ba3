/* SPDX-License-Identifier: MIT */
/*
 * --service discard (RFC 863), chargen (RFC 864) and sockperf, on TCP, UDP
 * and UNIX listeners, with exact byte counts and the exact pattern, on every
 * engine that serves them.
 */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"

static enum rb_service service;
static const char *listen_url = "tcp://127.0.0.1:0";
static const char *second_url;

static void service_tweak(struct rb_config *cfg)
{
	cfg->service = service;
	/* sockperf's client sends as fast as it is answered, from one source. */
	if (service == RB_SERVICE_SOCKPERF)
		cfg->udp_rate = 0;
	cfg->listen[0] = listen_url;
	cfg->n_listen = 1;
	if (second_url)
		cfg->listen[cfg->n_listen++] = second_url;
}

/* What a wait is for, naming the engine configuration under test. */
static char closing[160] = "the connection to close";

static void start_on(struct test_server *ts, const struct engine_param *p, enum rb_service sv)
{
	char desc[96];

	if (p) {
		th_engine_param_describe(p, desc, sizeof(desc));
		snprintf(closing, sizeof(closing), "the connection to close (%s)", desc);
	}
	service = sv;
	th_server_start(ts, p, service_tweak);
}

/* The engine configurations that serve discard, chargen and sockperf
 * (rb_engine_features says "services"). The services take no copy mode:
 * writev configurations only. */
static size_t service_params(struct engine_param **out)
{
	struct engine_param *all;
	size_t n = th_engine_params(&all), k = 0;

	for (size_t i = 0; i < n; i++) {
		char feat[128] = "";
		rb_engine_features(all[i].engine, feat, sizeof(feat));
		if (strstr(feat, "services") && all[i].copy == RB_COPY_WRITEV)
			all[k++] = all[i];
	}
	*out = all;
	return k;
}

#define SERVICE_TEST(name, secs)                                                                   \
	ParameterizedTestParameters(services, name)                                                \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = service_params(&p);                                                     \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, services, name, .timeout = (secs))

/* The RFC 864 stream, from its start: line i holds the 72 characters from
 * 32 + i mod 95 on, wrapping within 32..126, then CR LF. */
static unsigned char chargen_byte(size_t off)
{
	size_t line = off / 74, col = off % 74;

	if (col == 72)
		return '\r';
	if (col == 73)
		return '\n';
	return (unsigned char)(32 + (line + col) % 95);
}

static bool closed_n(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg && st->active == 0;
}

static void discard_stream(struct test_server *ts, int fd)
{
	const size_t len = 5u << 20;
	unsigned char *data = malloc(len), b;
	struct rb_stats st;

	th_fill(data, len, 21);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, MSG_NOSIGNAL);
		cr_assert_gt(r, 0);
		off += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	cr_assert_eq(read(fd, &b, 1), 0, "discard sent something back");
	close(fd);
	th_wait_stats(ts, closed_n, &(uint64_t){1}, closing);
	rb_server_stats(ts->srv, &st);
	cr_expect_eq(st.bytes_in, len);
	cr_expect_eq(st.bytes_out, 0);
	cr_expect_eq(st.resets, 0);
	cr_expect_eq(st.buffered, 0);
	free(data);
}

SERVICE_TEST(discard_tcp, 60)
{
	struct test_server ts;

	start_on(&ts, p, RB_SERVICE_DISCARD);
	discard_stream(&ts, th_connect(ts.port));
	th_server_stop(&ts);
}

static int unix_connect(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0, "connect %s: %s", path,
	             strerror(errno));
	return fd;
}

SERVICE_TEST(discard_unix, 60)
{
	static char path[64], url[80];
	struct test_server ts;

	snprintf(path, sizeof(path), "/tmp/rebound-discard-%d.sock", (int)getpid());
	snprintf(url, sizeof(url), "unix:%s", path);
	second_url = url; /* after the TCP listener the helper reads a port from */
	start_on(&ts, p, RB_SERVICE_DISCARD);
	discard_stream(&ts, unix_connect(path));
	th_server_stop(&ts);
}

static void chargen_read(int fd, size_t len)
{
	unsigned char *got = malloc(len);
	size_t off = 0;

	while (off < len) {
		ssize_t r = read(fd, got + off, len - off);
		cr_assert_gt(r, 0, "read: %s", r ? strerror(errno) : "EOF");
		off += (size_t)r;
	}
	for (size_t i = 0; i < len; i++)
		cr_assert_eq(got[i], chargen_byte(i), "byte %zu is %#x, want %#x", i, got[i],
		             chargen_byte(i));
	free(got);
}

/* 3 MiB of the stream, exactly, then the peer leaves: a clean end. */
static void chargen_stream(struct test_server *ts, int fd)
{
	struct rb_stats st;

	chargen_read(fd, 3u << 20);
	close(fd);
	th_wait_stats(ts, closed_n, &(uint64_t){1}, closing);
	rb_server_stats(ts->srv, &st);
	cr_expect_geq(st.bytes_out, 3u << 20);
	cr_expect_eq(st.bytes_in, 0);
	cr_expect_eq(st.buffered, 0);
}

SERVICE_TEST(chargen_tcp, 60)
{
	struct test_server ts;

	start_on(&ts, p, RB_SERVICE_CHARGEN);
	chargen_stream(&ts, th_connect(ts.port));
	th_server_stop(&ts);
}

SERVICE_TEST(chargen_unix, 60)
{
	static char path[64], url[80];
	struct test_server ts;

	snprintf(path, sizeof(path), "/tmp/rebound-chargen-%d.sock", (int)getpid());
	snprintf(url, sizeof(url), "unix:%s", path);
	second_url = url; /* after the TCP listener the helper reads a port from */
	start_on(&ts, p, RB_SERVICE_CHARGEN);
	chargen_stream(&ts, unix_connect(path));
	th_server_stop(&ts);
}

/* chargen's input is read and dropped (RFC 864), and its FIN ends it. */
SERVICE_TEST(chargen_drops_input, 60)
{
	struct test_server ts;
	struct rb_stats st;
	int fd;

	start_on(&ts, p, RB_SERVICE_CHARGEN);
	fd = th_connect(ts.port);
	cr_assert_eq(send(fd, "ignored", 7, MSG_NOSIGNAL), 7);
	chargen_read(fd, 100000);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	th_wait_stats(&ts, closed_n, &(uint64_t){1}, closing);
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.bytes_in, 7);
	close(fd);
	th_server_stop(&ts);
}

/* ---- UDP: on every engine that serves it ---- */

#define UDP_SERVICE_TEST(name, secs)                                                               \
	ParameterizedTestParameters(services, name)                                                \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = th_udp_engine_params(&p);                                               \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, services, name, .timeout = secs)

static int udp_socket_to(const struct test_server *ts, size_t idx, struct sockaddr_in *to)
{
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in me = {.sin_family = AF_INET};

	me.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&me, sizeof(me)), 0);
	*to = (struct sockaddr_in){.sin_family = AF_INET,
	                           .sin_port = htons((uint16_t)rb_server_port(ts->srv, idx))};
	to->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	return fd;
}

static bool datagrams_in(const struct rb_stats *st, void *arg)
{
	return st->datagrams_in == *(uint64_t *)arg;
}

UDP_SERVICE_TEST(discard_udp, 60)
{
	struct test_server ts;
	struct sockaddr_in to;
	struct rb_stats st;
	unsigned char b;
	int fd;

	listen_url = "udp://127.0.0.1:0";
	start_on(&ts, p, RB_SERVICE_DISCARD);
	fd = udp_socket_to(&ts, 0, &to);
	for (int i = 0; i < 10; i++)
		cr_assert_eq(
		        sendto(fd, "0123456789", (size_t)i, 0, (struct sockaddr *)&to, sizeof(to)),
		        i);
	th_wait_stats(&ts, datagrams_in, &(uint64_t){10}, "ten datagrams");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.bytes_in, 45);
	cr_expect_eq(st.datagrams_out, 0);
	cr_expect_eq(st.bytes_out, 0);
	cr_expect_eq(recv(fd, &b, 1, MSG_DONTWAIT), -1);
	cr_expect_eq(errno, EAGAIN);
	close(fd);
	th_server_stop(&ts);
}

/* Each datagram is answered by the next six lines of the stream. */
UDP_SERVICE_TEST(chargen_udp, 60)
{
	struct test_server ts;
	struct sockaddr_in to;
	unsigned char got[1024];
	int fd;

	listen_url = "udp://127.0.0.1:0";
	start_on(&ts, p, RB_SERVICE_CHARGEN);
	fd = udp_socket_to(&ts, 0, &to);
	for (int k = 0; k < 20; k++) {
		ssize_t r;
		cr_assert_eq(sendto(fd, "", 0, 0, (struct sockaddr *)&to, sizeof(to)), 0);
		r = recv(fd, got, sizeof(got), 0);
		cr_assert_eq(r, 6 * 74, "datagram %d: %zd bytes", k, r);
		for (size_t i = 0; i < (size_t)r; i++) {
			size_t off = ((size_t)k * 6 * 74 + i) % (95 * 74);
			cr_assert_eq(got[i], chargen_byte(off), "datagram %d byte %zu", k, i);
		}
	}
	close(fd);
	th_server_stop(&ts);
}

/* ---- sockperf ---- */

static void sp_msg(unsigned char *m, uint64_t seq, unsigned flags, uint32_t len)
{
	for (int i = 0; i < 8; i++)
		m[i] = (unsigned char)(seq >> (56 - 8 * i));
	m[8] = (unsigned char)(flags >> 8);
	m[9] = (unsigned char)flags;
	m[10] = (unsigned char)(len >> 24);
	m[11] = (unsigned char)(len >> 16);
	m[12] = (unsigned char)(len >> 8);
	m[13] = (unsigned char)len;
	for (uint32_t i = 14; i < len; i++)
		m[i] = (unsigned char)(seq + i);
}

/*
 * A stream of messages, sent byte by byte in places to test the framing:
 * those that ask for a pong come back with the client flag cleared, the
 * others (and the warm-up flag alone) are dropped.
 */
SERVICE_TEST(sockperf_tcp_framing, 60)
{
	static const struct {
		unsigned flags;
		uint32_t len;
	} msgs[] = {{3, 14}, {1, 100}, {3, 64}, {7, 1000}, {1, 14}, {3, 65536}, {5, 20}, {3, 14}};
	const size_t n = sizeof(msgs) / sizeof(msgs[0]);
	unsigned char *in = malloc(1 << 20), *want = malloc(1 << 20), *got = malloc(1 << 20);
	size_t in_len = 0, want_len = 0, off = 0;
	struct test_server ts;
	int fd;

	for (size_t i = 0; i < n; i++) {
		sp_msg(in + in_len, i + 1, msgs[i].flags, msgs[i].len);
		if (msgs[i].flags & 2) {
			memcpy(want + want_len, in + in_len, msgs[i].len);
			want[want_len + 9] &= (unsigned char)~1u;
			want_len += msgs[i].len;
		}
		in_len += msgs[i].len;
	}
	start_on(&ts, p, RB_SERVICE_SOCKPERF);
	fd = th_connect(ts.port);
	/* The first 30 bytes one at a time: headers split anywhere. */
	for (size_t i = 0; i < 30; i++)
		cr_assert_eq(send(fd, in + i, 1, MSG_NOSIGNAL), 1);
	for (size_t o = 30; o < in_len;) {
		ssize_t r = send(fd, in + o, in_len - o, MSG_NOSIGNAL);
		cr_assert_gt(r, 0);
		o += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	for (ssize_t r; (r = read(fd, got + off, (1 << 20) - off)) > 0;)
		off += (size_t)r;
	cr_assert_eq(off, want_len, "got %zu bytes, want %zu", off, want_len);
	cr_assert_eq(memcmp(got, want, want_len), 0);
	close(fd);
	th_server_stop(&ts);
	free(in);
	free(want);
	free(got);
}

/* A length below the header's own is a protocol error: the peer is reset. */
SERVICE_TEST(sockperf_bad_length_resets, 60)
{
	unsigned char m[14], b;
	struct test_server ts;
	int fd;

	start_on(&ts, p, RB_SERVICE_SOCKPERF);
	fd = th_connect(ts.port);
	sp_msg(m, 1, 3, 13);
	cr_assert_eq(send(fd, m, sizeof(m), MSG_NOSIGNAL), 14);
	cr_assert_eq(read(fd, &b, 1), -1);
	cr_assert_eq(errno, ECONNRESET);
	close(fd);
	th_server_stop(&ts);
}

static bool datagrams_out_1(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->datagrams_out == 1;
}

UDP_SERVICE_TEST(sockperf_udp, 60)
{
	unsigned char m[200], got[256];
	struct test_server ts;
	struct sockaddr_in to;
	struct rb_stats st;
	int fd;

	listen_url = "udp://127.0.0.1:0";
	start_on(&ts, p, RB_SERVICE_SOCKPERF);
	fd = udp_socket_to(&ts, 0, &to);
	/* No pong asked: dropped. Then one that asks: answered. */
	sp_msg(m, 1, 1, 200);
	cr_assert_eq(sendto(fd, m, 200, 0, (struct sockaddr *)&to, sizeof(to)), 200);
	sp_msg(m, 2, 3, 200);
	cr_assert_eq(sendto(fd, m, 200, 0, (struct sockaddr *)&to, sizeof(to)), 200);
	cr_assert_eq(recv(fd, got, sizeof(got), 0), 200);
	m[9] = 2;
	cr_assert_eq(memcmp(got, m, 200), 0);
	th_wait_stats(&ts, datagrams_out_1, NULL, "the answer to be counted");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.datagrams_in, 2);
	cr_expect_eq(st.datagrams_out, 1);
	close(fd);
	th_server_stop(&ts);
}

/* sockperf's own client, where it is installed (CI installs it). */
static void run_sockperf(const char *proto, int port)
{
	char portstr[16];
	pid_t pid;
	int status;

	if (access("/usr/bin/sockperf", X_OK) != 0)
		cr_skip_test("sockperf is not installed (Debian package sockperf)");
	snprintf(portstr, sizeof(portstr), "%d", port);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		int null = open("/dev/null", O_WRONLY);
		dup2(null, 1);
		if (strcmp(proto, "tcp") == 0)
			execl("/usr/bin/sockperf", "sockperf", "ping-pong", "-i", "127.0.0.1", "-p",
			      portstr, "--tcp", "-t", "1", (char *)NULL);
		else
			execl("/usr/bin/sockperf", "sockperf", "ping-pong", "-i", "127.0.0.1", "-p",
			      portstr, "-t", "1", (char *)NULL);
		_exit(127);
	}
	cr_assert_eq(waitpid(pid, &status, 0), pid);
	cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "sockperf %s exited with %d",
	          proto, status);
}

static bool answered(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->bytes_out > 0;
}

SERVICE_TEST(sockperf_client_tcp, 60)
{
	struct test_server ts;

	start_on(&ts, p, RB_SERVICE_SOCKPERF);
	run_sockperf("tcp", ts.port);
	th_wait_stats(&ts, answered, NULL, "an answer");
	th_server_stop(&ts);
}

UDP_SERVICE_TEST(sockperf_client_udp, 60)
{
	struct test_server ts;

	listen_url = "udp://127.0.0.1:0";
	start_on(&ts, p, RB_SERVICE_SOCKPERF);
	run_sockperf("udp", rb_server_port(ts.srv, 0));
	th_wait_stats(&ts, answered, NULL, "an answer");
	th_server_stop(&ts);
}
