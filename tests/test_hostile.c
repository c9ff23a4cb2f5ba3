/* SPDX-License-Identifier: MIT */
/*
 * Hostile peers and hostile neighbours (issue 9, items 4 to 8): UDP
 * reflection and loops, UDP port hijack, a busy UNIX socket path at
 * start-up, the UNIX socket file's safety and mode, keepalive on accepted
 * sockets.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/parameterized.h>

#include "helpers.h"

/* The UDP tests run on every engine that serves UDP. */
#define UDP_HOSTILE_TEST(name)                                                                     \
	ParameterizedTestParameters(hostile, name)                                                 \
	{                                                                                          \
		struct engine_param *p;                                                            \
		size_t n = th_udp_engine_params(&p);                                               \
		return cr_make_param_array(struct engine_param, p, n);                             \
	}                                                                                          \
	ParameterizedTest(struct engine_param *p, hostile, name, .timeout = 30)

static struct test_server ts;
static const char *g_listen = "udp://127.0.0.1:0";
static unsigned g_threads = 1;
static unsigned g_udp_rate = 10000;

static void tweak(struct rb_config *cfg)
{
	cfg->listen[0] = g_listen;
	cfg->threads = g_threads;
	cfg->udp_rate = g_udp_rate;
}

static int udp_socket(const char *ip, int port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cr_assert_geq(fd, 0);
	inet_pton(AF_INET, ip, &sin.sin_addr);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0, "bind %s:%d: %s", ip, port,
	             strerror(errno));
	return fd;
}

static void send_to_server(int fd, const char *msg)
{
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ts.port)};

	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&to, sizeof(to)),
	             (ssize_t)strlen(msg));
}

static void expect_echo(int fd, const char *msg)
{
	char buf[256];
	struct pollfd pf = {.fd = fd, .events = POLLIN};

	cr_assert_eq(poll(&pf, 1, 10000), 1, "no echo of '%s'", msg);
	ssize_t r = recv(fd, buf, sizeof(buf), 0);
	cr_assert_eq(r, (ssize_t)strlen(msg));
	cr_assert_eq(memcmp(buf, msg, (size_t)r), 0);
}

static void expect_nothing(int fd)
{
	char buf[256];
	cr_assert_eq(recv(fd, buf, sizeof(buf), MSG_DONTWAIT), -1, "an answer came back");
	cr_assert_eq(errno, EAGAIN);
}

static bool out_at_least(const struct rb_stats *st, void *arg)
{
	return st->datagrams_out >= *(uint64_t *)arg;
}

/* Datagrams from a port below 1024 or from the served port itself are not
 * answered (reflection, loops between echo servers); others are. */
UDP_HOSTILE_TEST(udp_low_and_own_ports_are_not_answered)
{
	struct rb_stats st;

	if (geteuid() != 0)
		cr_skip_test("binding a port below 1024 needs root");
	th_server_start(&ts, p, tweak);
	int low = udp_socket("127.0.0.1", 1023);
	int same = udp_socket("127.0.0.2", ts.port); /* another host's rebound, same port */
	int ok = udp_socket("127.0.0.1", 0);
	send_to_server(low, "from a low port");
	send_to_server(same, "from the served port");
	send_to_server(ok, "from a client");
	/* One socket, one queue: the client's answer comes after the others ran. */
	expect_echo(ok, "from a client");
	expect_nothing(low);
	expect_nothing(same);
	/* The counter follows the send that the echo came from: wait for it. */
	uint64_t one = 1;
	th_wait_stats(&ts, out_at_least, &one, "the echo to be counted");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.datagrams_in, 3);
	cr_expect_eq(st.datagrams_refused, 2);
	cr_expect_eq(st.datagrams_out, 1);
	th_server_stop(&ts);
	close(low);
	close(same);
	close(ok);
}

static bool seen(const struct rb_stats *st, void *arg)
{
	return st->datagrams_in >= *(uint64_t *)arg;
}

/* A source gets at most --udp-rate answers a second (burst of the same). */
UDP_HOSTILE_TEST(udp_rate_limit_per_source)
{
	uint64_t want = 40;
	struct rb_stats st;
	char buf[64];
	int got = 0;

	g_udp_rate = 5;
	th_server_start(&ts, p, tweak);
	int fd = udp_socket("127.0.0.1", 0);
	for (int i = 0; i < 40; i++)
		send_to_server(fd, "x");
	th_wait_stats(&ts, seen, &want, "40 datagrams to arrive");
	while (recv(fd, buf, sizeof(buf), MSG_DONTWAIT) == 1)
		got++;
	rb_server_stats(ts.srv, &st);
	th_server_stop(&ts);
	g_udp_rate = 10000;
	/* Five at once, plus one per 200 ms that passed while they arrived. */
	cr_expect_geq(got, 5);
	cr_expect_leq(got, 10);
	cr_expect_eq(st.datagrams_out, (uint64_t)got);
	cr_expect_eq(st.datagrams_limited, 40 - st.datagrams_out);
	close(fd);
}

/* Nobody can bind the served UDP port and take its datagrams: no
 * SO_REUSEADDR on it (with one worker), and with SO_REUSEPORT (several
 * workers) the kernel lets only the same user join. */
UDP_HOSTILE_TEST(udp_port_cannot_be_hijacked)
{
	int one = 1;

	th_server_start(&ts, p, tweak);
	int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)ts.port)};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	cr_expect_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), -1,
	             "a second socket bound the served UDP port");
	cr_expect_eq(errno, EADDRINUSE);
	close(fd);
	th_server_stop(&ts);
}

UDP_HOSTILE_TEST(udp_reuseport_refuses_another_user)
{
	int st;

	if (geteuid() != 0)
		cr_skip_test("switching to user nobody needs root");
	g_threads = 2;
	th_server_start(&ts, p, tweak);
	g_threads = 1;
	pid_t pid = fork();
	if (pid == 0) {
		int one = 1, fd;
		struct sockaddr_in sin = {.sin_family = AF_INET,
		                          .sin_port = htons((uint16_t)ts.port)};
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (setgid(65534) < 0 || setuid(65534) < 0)
			_exit(3);
		fd = socket(AF_INET, SOCK_DGRAM, 0);
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
		_exit(bind(fd, (struct sockaddr *)&sin, sizeof(sin)) == 0 ? 1
		      : errno == EADDRINUSE                               ? 0
		                                                          : 2);
	}
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_expect(WIFEXITED(st) && WEXITSTATUS(st) == 0, "user nobody: bind %s",
	          WEXITSTATUS(st) == 1 ? "succeeded" : "failed oddly");
	th_server_stop(&ts);
}

static char g_path[108];

static void unix_path(const char *name)
{
	snprintf(g_path, sizeof(g_path), "/tmp/rebound-test-%d-%s", (int)getpid(), name);
	unlink(g_path);
}

static int rb_create_unix(struct rb_server **srv, char *err, size_t len)
{
	struct rb_config cfg;
	char url[128];

	rb_config_init(&cfg);
	cfg.log_level = RB_LOG_ERR;
	snprintf(url, sizeof(url), "unix:%s", g_path);
	cfg.listen[0] = url;
	cfg.n_listen = 1;
	return rb_server_create(&cfg, srv, err, len);
}

/* A live server whose backlog is full answers the start-up probe with
 * EAGAIN: that means "in use", at once, never a hang. */
Test(hostile, busy_unix_path_refused_without_hanging, .timeout = 20)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct rb_server *srv = NULL;
	char err[512];
	int lfd, clients[64], n = 0;

	unix_path("busy");
	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", g_path);
	lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sun, sizeof(sun)), 0);
	cr_assert_eq(listen(lfd, 0), 0);
	while (n < 64) {
		clients[n] = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
		if (connect(clients[n], (struct sockaddr *)&sun, sizeof(sun)) < 0) {
			cr_assert_eq(errno, EAGAIN, "connect: %s", strerror(errno));
			close(clients[n]);
			break;
		}
		n++;
	}
	int rc = rb_create_unix(&srv, err, sizeof(err));
	cr_expect_eq(rc, -EADDRINUSE, "rc %d: %s", rc, err);
	char want[256];
	snprintf(want, sizeof(want), "cannot listen on 'unix:%s': Address already in use", g_path);
	cr_expect_str_eq(err, want);
	for (int i = 0; i < n; i++)
		close(clients[i]);
	close(lfd);
	unlink(g_path);
}

/* At exit the socket file is removed only if it is still ours. */
Test(hostile, unix_exit_keeps_a_file_that_is_not_ours, .timeout = 20)
{
	struct rb_server *srv = NULL;
	char err[512];
	struct stat st;

	unix_path("replaced");
	cr_assert_eq(rb_create_unix(&srv, err, sizeof(err)), 0, "%s", err);
	cr_assert_eq(unlink(g_path), 0);
	int fd = open(g_path, O_CREAT | O_WRONLY | O_EXCL, 0600);
	cr_assert_geq(fd, 0);
	close(fd);
	rb_server_destroy(srv);
	cr_expect_eq(stat(g_path, &st), 0, "a regular file put in the socket's place was deleted");
	cr_expect(S_ISREG(st.st_mode));
	unlink(g_path);
}

/* The socket file's mode is --unix-mode (0660), whatever the umask. */
Test(hostile, unix_socket_mode_ignores_the_umask, .timeout = 20)
{
	struct rb_server *srv = NULL;
	char err[512];
	struct stat st;

	unix_path("mode");
	mode_t old = umask(0);
	int rc = rb_create_unix(&srv, err, sizeof(err));
	umask(old);
	cr_assert_eq(rc, 0, "%s", err);
	cr_assert_eq(stat(g_path, &st), 0);
	cr_expect_eq(st.st_mode & 07777, 0660, "mode %o", st.st_mode & 07777);
	rb_server_destroy(srv);
	cr_expect_eq(stat(g_path, &st), -1, "our own socket file was left behind");
}

/* Find the server's side of a connection in this process by its addresses. */
static int server_side_fd(int client)
{
	struct sockaddr_in mine, peer;
	socklen_t len = sizeof(mine);
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int found = -1;

	cr_assert_eq(getsockname(client, (struct sockaddr *)&mine, &len), 0);
	while (d && (e = readdir(d)) && found < 0) {
		int fd = atoi(e->d_name);
		len = sizeof(peer);
		if (fd == client || getpeername(fd, (struct sockaddr *)&peer, &len) < 0 ||
		    peer.sin_family != AF_INET)
			continue;
		if (peer.sin_port == mine.sin_port && peer.sin_addr.s_addr == mine.sin_addr.s_addr)
			found = fd;
	}
	if (d)
		closedir(d);
	cr_assert_geq(found, 0, "no server-side socket found");
	return found;
}

/* Accepted sockets carry keepalive and a user timeout, so a peer that
 * vanished behind a dropped link does not hold its descriptor for ever. */
Test(hostile, accepted_sockets_have_keepalive, .timeout = 30)
{
	int v;
	unsigned ut;
	socklen_t len = sizeof(v);
	char b = 'k';

	g_listen = "tcp://127.0.0.1:0";
	th_server_start(&ts, NULL, tweak);
	g_listen = "udp://127.0.0.1:0";
	int c = th_connect(ts.port);
	cr_assert_eq(send(c, &b, 1, 0), 1);
	cr_assert_eq(recv(c, &b, 1, 0), 1); /* accepted and tuned by now */
	int s = server_side_fd(c);
	cr_assert_eq(getsockopt(s, SOL_SOCKET, SO_KEEPALIVE, &v, &len), 0);
	cr_expect_eq(v, 1, "SO_KEEPALIVE off");
	cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_KEEPIDLE, &v, &len), 0);
	cr_expect_eq(v, 120);
	cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_KEEPINTVL, &v, &len), 0);
	cr_expect_eq(v, 30);
	cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_KEEPCNT, &v, &len), 0);
	cr_expect_eq(v, 4);
	len = sizeof(ut);
	cr_assert_eq(getsockopt(s, IPPROTO_TCP, TCP_USER_TIMEOUT, &ut, &len), 0);
	cr_expect_eq(ut, 240000u);
	close(c);
	th_server_stop(&ts);
}
