/* SPDX-License-Identifier: MIT */
/*
 * The sockmap engine beyond the shared echo suite (which runs on it too):
 * what it does differently and what the kernel does not do for it. The
 * probe's reasons (exit 3), UNIX and UDP refused, auto never choosing it;
 * echo with no wake-up and no read or write by the worker; bytes sent before
 * the socket joined the sockhash, and a peer that half-closed before it
 * could; the reset past the cap (it cannot pause a sender); the stop
 * deadline with echo still unsent; 10,000 idle connections.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
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
#include <time.h>
#include <unistd.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>

#include "engines.h"
#include "helpers.h"

#ifndef CAP_PERFMON
#define CAP_PERFMON 38
#endif
#ifndef CAP_BPF
#define CAP_BPF 39
#endif

static const struct engine_param sockmap_param = {RB_ENGINE_SOCKMAP, RB_TRIGGER_EDGE,
                                                  RB_COPY_WRITEV};

/* Skip, saying why, only when this machine cannot run the engine at all. */
static void need_sockmap(void)
{
	char why[256] = "";

	if (rb_engine_available(RB_ENGINE_SOCKMAP, why, sizeof(why)) < 0)
		cr_skip_test("%s", why);
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static bool all_closed(const struct rb_stats *st, void *arg)
{
	return st->closed == *(uint64_t *)arg && st->active == 0;
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

/* Read exactly len bytes (blocking), asserting they are want. */
static void read_exact(int fd, const unsigned char *want, size_t len)
{
	unsigned char *got = malloc(len ? len : 1);
	size_t n = 0;

	while (n < len) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		cr_assert_gt(poll(&pfd, 1, 20000), 0, "stalled after %zu of %zu bytes", n, len);
		ssize_t r = recv(fd, got + n, len - n, 0);
		cr_assert_gt(r, 0, "recv after %zu of %zu bytes: %s", n, len,
		             r == 0 ? "EOF" : strerror(errno));
		n += (size_t)r;
	}
	cr_assert(memcmp(got, want, len) == 0, "echoed bytes differ");
	free(got);
}

static void expect_eof(int fd)
{
	char b;
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	cr_assert_gt(poll(&pfd, 1, 20000), 0, "no EOF");
	cr_assert_eq(recv(fd, &b, 1, 0), 0, "more bytes, or an error, instead of EOF");
}

/* ---- the daemon, spawned with a seccomp filter or without capabilities ---- */

#if defined(__x86_64__)
#define SECCOMP_ARCH AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define SECCOMP_ARCH AUDIT_ARCH_AARCH64
#endif

enum jail { JAIL_NONE, JAIL_BPF_EPERM, JAIL_BPF_ENOSYS, JAIL_NO_CAPS };

/* Run rebound with args, confined as asked; its exit status, stderr in err
 * and stdout in out. */
static int run_jailed(enum jail how, const char *const *args, char *err, size_t errlen, char *out,
                      size_t outlen)
{
	const char *bin = getenv("REBOUND_BIN");
	const char *argv[16];
	char **envp = th_child_env(NULL);
	size_t n = 0;
	int o[2], e[2], st;
	pid_t pid;

	cr_assert_not_null(bin, "REBOUND_BIN is not set (run through meson test)");
	argv[n++] = bin;
	while (*args && n < 15)
		argv[n++] = *args++;
	argv[n] = NULL;
	cr_assert_eq(pipe2(o, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	pid = fork();
	cr_assert_geq(pid, 0);
	if (pid == 0) {
		if (how == JAIL_BPF_EPERM || how == JAIL_BPF_ENOSYS) {
#ifdef SECCOMP_ARCH
			unsigned ret = SECCOMP_RET_ERRNO | (how == JAIL_BPF_EPERM ? EPERM : ENOSYS);
			struct sock_filter f[] = {
			        BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			                 offsetof(struct seccomp_data, arch)),
			        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SECCOMP_ARCH, 1, 0),
			        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
			        BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
			                 offsetof(struct seccomp_data, nr)),
			        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, __NR_bpf, 0, 1),
			        BPF_STMT(BPF_RET | BPF_K, ret),
			        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
			};
			struct sock_fprog prog = {.len = sizeof(f) / sizeof(f[0]), .filter = f};
			if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
			    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
				_exit(120);
#endif
		} else if (how == JAIL_NO_CAPS) {
			/* Out of the bounding set: root does not get them back at exec. */
			static const int caps[] = {CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON,
			                           CAP_SYS_ADMIN};
			for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++)
				if (prctl(PR_CAPBSET_DROP, caps[i], 0, 0, 0) < 0)
					_exit(122);
		}
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		dup2(o[1], 1);
		dup2(e[1], 2);
		execve(bin, (char *const *)argv, envp);
		_exit(121);
	}
	close(o[1]);
	close(e[1]);
	th_slurp(e[0], err, errlen);
	th_slurp(o[0], out, outlen);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 1000 + WTERMSIG(st);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void need_seccomp(void)
{
#ifndef SECCOMP_ARCH
	cr_skip_test("no seccomp architecture constant for this CPU in the test");
#endif
}

Test(sockmap, unavailable_under_seccomp_eperm, .timeout = 30)
{
	char err[1024], out[1024];

	need_sockmap();
	need_seccomp();
	cr_assert_eq(run_jailed(JAIL_BPF_EPERM,
	                        ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0"), err,
	                        sizeof(err), out, sizeof(out)),
	             3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'sockmap' cannot run here: creating a sockhash "
	                      "was refused (EPERM) with the capabilities it needs: BPF is "
	                      "disabled by a security policy or a seccomp filter\n");
}

Test(sockmap, unavailable_under_seccomp_enosys, .timeout = 30)
{
	char err[1024], out[1024];

	need_sockmap();
	need_seccomp();
	cr_assert_eq(run_jailed(JAIL_BPF_ENOSYS,
	                        ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0"), err,
	                        sizeof(err), out, sizeof(out)),
	             3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'sockmap' cannot run here: the kernel has no "
	                      "bpf() system call (CONFIG_BPF_SYSCALL), or a seccomp filter "
	                      "hides it\n");
}

Test(sockmap, unavailable_without_capabilities, .timeout = 30)
{
	char err[1024], out[1024];

	need_sockmap();
	if (geteuid() != 0)
		cr_skip_test("dropping capabilities from the bounding set needs root");
	cr_assert_eq(run_jailed(JAIL_NO_CAPS,
	                        ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0"), err,
	                        sizeof(err), out, sizeof(out)),
	             3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'sockmap' cannot run here: creating a sockhash "
	                      "needs CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON (missing: CAP_BPF, "
	                      "CAP_NET_ADMIN, CAP_PERFMON)\n");
	/* --list-engines leaves it out there, and lists it here. */
	cr_assert_eq(run_jailed(JAIL_NO_CAPS, ARGS("--list-engines"), err, sizeof(err), out,
	                        sizeof(out)),
	             0);
	cr_assert_null(strstr(out, "sockmap"), "listed without its capabilities: %s", out);
	cr_assert_eq(
	        run_jailed(JAIL_NONE, ARGS("--list-engines"), err, sizeof(err), out, sizeof(out)),
	        0);
	cr_assert_not_null(strstr(out, "sockmap\n"), "not listed: %s", out);
}

/* Built without libbpf: exit 3 with the table's reason. */
Test(sockmap, unbuilt_says_so, .timeout = 30)
{
	char err[1024], out[1024];

	if (rb__engine_find(RB_ENGINE_SOCKMAP)->model)
		cr_skip_test("built with libbpf: the unbuilt message cannot show here");
	cr_assert_eq(run_jailed(JAIL_NONE,
	                        ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0"), err,
	                        sizeof(err), out, sizeof(out)),
	             3, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: engine 'sockmap' is not available: built without "
	                      "libbpf\n");
}

Test(sockmap, unix_and_udp_refused, .timeout = 30)
{
	char err[1024], out[1024];

	need_sockmap();
	cr_assert_eq(run_jailed(JAIL_NONE, ARGS("--engine", "sockmap", "--listen", "unix:@rb-sm"),
	                        err, sizeof(err), out, sizeof(out)),
	             2, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: listen URL 'unix:@rb-sm': the sockmap engine does not "
	                      "serve UNIX sockets\n");
	cr_assert_eq(run_jailed(JAIL_NONE,
	                        ARGS("--engine", "sockmap", "--listen", "udp://127.0.0.1:0"), err,
	                        sizeof(err), out, sizeof(out)),
	             2, "stderr: %s", err);
	cr_assert_str_eq(err, "rebound: listen URL 'udp://127.0.0.1:0': the sockmap engine does "
	                      "not serve UDP\n");
}

/*
 * The kernel echoes: there is nothing in user space to relay, time, serve
 * otherwise or impair. The engine table says so (caps 0), and every such
 * option is refused at start, exit 2, naming the option and the engine.
 */
Test(sockmap, options_it_cannot_honour_are_refused, .timeout = 60)
{
	static const struct {
		const char *opt, *val, *msg;
	} cases[] = {
	        {"--copy", "splice", "--copy splice is not supported by the sockmap engine"},
	        {"--trigger", "level", "--trigger level is not supported by the sockmap engine"},
	        {"--forward", "tcp://127.0.0.1:9",
	         "--forward is not supported by the sockmap engine"},
	        {"--service", "discard",
	         "--service discard is not supported by the sockmap engine"},
	        {"--idle-timeout", "1000", "--idle-timeout is not supported by the sockmap engine"},
	        {"--write-timeout", "1000",
	         "--write-timeout is not supported by the sockmap engine"},
	        {"--delay", "5ms", "--delay is not supported by the sockmap engine"},
	        {"--reset-after", "100", "--reset-after is not supported by the sockmap engine"},
	};
	char err[1024], out[1024], want[512], feat[128];

	need_sockmap();
	cr_assert_eq(rb_engine_features(RB_ENGINE_SOCKMAP, feat, sizeof(feat)), 0);
	cr_assert_str_eq(feat, "");
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		cr_assert_eq(run_jailed(JAIL_NONE,
		                        ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0",
		                             cases[i].opt, cases[i].val),
		                        err, sizeof(err), out, sizeof(out)),
		             2, "%s %s: stderr: %s", cases[i].opt, cases[i].val, err);
		snprintf(want, sizeof(want), "rebound: %s\n", cases[i].msg);
		cr_assert_str_eq(err, want, "%s %s", cases[i].opt, cases[i].val);
	}
}

/* It needs privileges: auto never takes it, wherever it is in the table. */
Test(sockmap, auto_never_chooses_it)
{
	const struct rb_engine_desc *d = rb__engine_find(RB_ENGINE_SOCKMAP);

	cr_assert_not_null(d);
	cr_assert_str_eq(d->name, "sockmap");
	cr_assert_eq(d->caps & (RB_CAP_AUTO | RB_CAP_UDP | RB_CAP_UNIX | RB_CAP_SPLICE), 0);
	cr_assert_neq(rb__engine_auto(), d);
}

/* ---- the echo path ---- */

static bool bytes_at(const struct rb_stats *st, void *arg)
{
	uint64_t want = *(uint64_t *)arg;
	return st->bytes_in == want && st->bytes_out == want;
}

/*
 * The kernel echoes: 2000 round trips on one connection wake the worker
 * only for its counters' tick, and it reads and writes nothing itself.
 */
Test(sockmap, ping_pong_without_the_worker, .timeout = 60)
{
	enum { ROUNDS = 2000, SIZE = 512 };
	unsigned char msg[SIZE];
	struct test_server ts;
	struct rb_stats before, st;
	uint64_t want = (uint64_t)ROUNDS * SIZE, t0, elapsed;
	int fd;

	need_sockmap();
	th_fill(msg, sizeof(msg), 4);
	th_server_start(&ts, &sockmap_param, NULL);
	fd = th_connect(ts.port);
	/* The first round trip: the connection is in the sockhash after it. */
	cr_assert_eq(send(fd, msg, SIZE, 0), SIZE);
	read_exact(fd, msg, SIZE);
	rb_server_stats(ts.srv, &before);
	t0 = now_ms();
	for (int i = 1; i < ROUNDS; i++) {
		msg[0] = (unsigned char)i;
		cr_assert_eq(send(fd, msg, SIZE, 0), SIZE);
		read_exact(fd, msg, SIZE);
	}
	elapsed = now_ms() - t0;
	th_wait_stats(&ts, bytes_at, &want, "the program to count every byte");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.read_calls, 0, "the worker read %lu times", (unsigned long)st.read_calls);
	cr_expect_eq(st.write_calls, 0);
	/* The counters' tick is every 100 ms, and one wake-up may be in flight. */
	cr_expect_leq(st.wakeups - before.wakeups, elapsed / 100 + 2,
	              "%lu wake-ups in %lu ms of echo",
	              (unsigned long)(st.wakeups - before.wakeups), (unsigned long)elapsed);
	close(fd);
	th_wait_stats(&ts, all_closed, &(uint64_t){1}, "the connection to close");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.resets, 0);
	th_server_stop(&ts);
}

/* A listening socket the test owns, handed to the server later as fd:N. */
static int listen_fd;
static char listen_url[32];

static void adopt_listener(struct rb_config *cfg)
{
	cfg->listen[0] = listen_url;
}

static int test_listener(int *port)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_geq(fd, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(fd, 16), 0);
	cr_assert_eq(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
	*port = ntohs(sin.sin_port);
	snprintf(listen_url, sizeof(listen_url), "fd:%d", fd);
	return fd;
}

/*
 * Bytes that arrived before the socket joined the sockhash: the verdict runs
 * only when more arrive, so the server makes it run (SO_RCVLOWAT). Here the
 * client sends all of it, then waits, before the server even accepts.
 */
Test(sockmap, bytes_before_joining_are_echoed, .timeout = 60)
{
	const size_t len = 100000;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	int port, fd;

	need_sockmap();
	th_fill(data, len, 8);
	listen_fd = test_listener(&port);
	fd = th_connect(port);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, 0);
		cr_assert_gt(r, 0);
		off += (size_t)r;
	}
	th_server_start(&ts, &sockmap_param, adopt_listener);
	read_exact(fd, data, len);
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	expect_eof(fd);
	close(fd);
	th_wait_stats(&ts, all_closed, &(uint64_t){1}, "the connection to close");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.bytes_in, len);
	cr_expect_eq(st.bytes_out, len);
	cr_expect_eq(st.read_calls, 0, "the worker read: the kernel was to echo all of it");
	cr_expect_eq(st.resets, 0);
	th_server_stop(&ts);
	free(data);
}

/*
 * A peer that sent everything and its FIN before the server accepted: the
 * kernel admits only ESTABLISHED sockets to a sockhash, so the worker echoes
 * these last bytes itself, then sends its FIN.
 */
Test(sockmap, half_closed_before_joining_is_echoed_by_the_worker, .timeout = 60)
{
	const size_t len = 70000;
	unsigned char *data = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	int port, fd;

	need_sockmap();
	th_fill(data, len, 9);
	listen_fd = test_listener(&port);
	fd = th_connect(port);
	for (size_t off = 0; off < len;) {
		ssize_t r = send(fd, data + off, len - off, 0);
		cr_assert_gt(r, 0);
		off += (size_t)r;
	}
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	th_server_start(&ts, &sockmap_param, adopt_listener);
	read_exact(fd, data, len);
	expect_eof(fd);
	close(fd);
	th_wait_stats(&ts, all_closed, &(uint64_t){1}, "the connection to close");
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.bytes_in, len);
	cr_expect_eq(st.bytes_out, len);
	cr_expect_gt(st.read_calls, 0, "the worker did not read: it was not the user path");
	cr_expect_eq(st.buffered, 0);
	cr_expect_eq(st.resets, 0);
	th_server_stop(&ts);
	free(data);
}

static size_t g_cap;

static void set_cap(struct rb_config *cfg)
{
	cfg->conn_buffer = g_cap;
}

static bool one_reset(const struct rb_stats *st, void *arg)
{
	(void)arg;
	return st->resets == 1 && st->active == 0;
}

/*
 * A peer that sends and never reads: nothing in the kernel bounds the echo
 * it leaves (the psock's queue is unlimited and unaccounted), so past the
 * cap the program drops its input and the worker resets it. What it got
 * before is an exact prefix, and the psock never held more than the cap.
 */
Test(sockmap, non_reader_is_reset_at_the_cap, .timeout = 60)
{
	const size_t len = 16u << 20;
	unsigned char *data = malloc(len), *got = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	size_t sent = 0, recvd = 0;
	bool reset_seen = false;
	int fd;

	need_sockmap();
	th_fill(data, len, 10);
	g_cap = 256u << 10;
	th_server_start(&ts, &sockmap_param, set_cap);
	fd = th_connect_bufs(ts.port, 65536, 65536);
	th_set_nonblock(fd);
	while (sent < len) {
		ssize_t r = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
		if (r > 0) {
			sent += (size_t)r;
			continue;
		}
		if (errno != EAGAIN) {
			/* The reset, reported here: recv will only see an EOF. */
			cr_assert(errno == ECONNRESET || errno == EPIPE, "send: %s",
			          strerror(errno));
			reset_seen = true;
			break;
		}
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, 100);
		rb_server_stats(ts.srv, &st);
		if (st.resets)
			break;
	}
	th_wait_stats(&ts, one_reset, NULL, "the non-reader to be reset");
	rb_server_stats(ts.srv, &st);
	cr_assert_gt(st.peak_conn_buffered, 0);
	cr_assert_leq(st.peak_conn_buffered, g_cap, "the psock held %lu, cap %zu",
	              (unsigned long)st.peak_conn_buffered, g_cap);
	cr_assert_lt(st.bytes_out, st.bytes_in, "nothing was dropped past the cap");
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		cr_assert_gt(poll(&pfd, 1, 20000), 0, "no reset after %zu bytes", recvd);
		ssize_t r = recv(fd, got + recvd, len - recvd, 0);
		if (r <= 0) {
			cr_assert((r < 0 && errno == ECONNRESET) || (r == 0 && reset_seen),
			          "want a reset, got %s", r == 0 ? "EOF" : strerror(errno));
			break;
		}
		recvd += (size_t)r;
	}
	cr_assert_leq(recvd, st.bytes_out);
	cr_assert(memcmp(got, data, recvd) == 0, "the %zu bytes echoed are not a prefix", recvd);
	close(fd);
	th_server_stop(&ts);
	free(data);
	free(got);
}

static void short_stop(struct rb_config *cfg)
{
	cfg->shutdown_timeout_ms = 300;
	cfg->conn_buffer = 64u << 20;
}

static bool unsent_echo(const struct rb_stats *st, void *arg)
{
	return st->bytes_in >= *(uint64_t *)arg;
}

/*
 * The stop deadline with echo still in the psock: the peer gets an RST (a
 * FIN would pass the cut stream off as whole) after an exact prefix, the
 * connection and its bytes are counted, and the stop ends on time.
 */
Test(sockmap, stop_deadline_cuts_a_non_reader, .timeout = 60)
{
	const size_t len = 8u << 20;
	unsigned char *data = malloc(len), *got = malloc(len);
	struct test_server ts;
	struct rb_stats st;
	uint64_t t0, want = 4u << 20;
	size_t sent = 0, recvd = 0;
	int fd;

	need_sockmap();
	th_fill(data, len, 11);
	th_server_start(&ts, &sockmap_param, short_stop);
	fd = th_connect_bufs(ts.port, 16384, 65536);
	th_set_nonblock(fd);
	while (sent < len) {
		ssize_t r = send(fd, data + sent, len - sent, MSG_NOSIGNAL);
		cr_assert(r > 0 || errno == EAGAIN, "send: %s", strerror(errno));
		if (r > 0)
			sent += (size_t)r;
		else
			poll(&(struct pollfd){.fd = fd, .events = POLLOUT}, 1, 100);
	}
	th_wait_stats(&ts, unsent_echo, &want, "the echo to pile up");
	t0 = now_ms();
	rb_server_stop(ts.srv);
	pthread_join(ts.thread, NULL);
	cr_assert_eq(ts.run_result, 0);
	cr_expect_lt(now_ms() - t0, 2000, "the stop took %lu ms (deadline 300)",
	             (unsigned long)(now_ms() - t0));
	rb_server_stats(ts.srv, &st);
	cr_expect_eq(st.stop_dropped_conns, 1);
	cr_expect_gt(st.stop_dropped_bytes, 0);
	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		cr_assert_gt(poll(&pfd, 1, 20000), 0, "no reset after %zu bytes", recvd);
		ssize_t r = recv(fd, got + recvd, len - recvd, 0);
		if (r <= 0) {
			cr_assert(r < 0 && errno == ECONNRESET, "want a reset, got %s",
			          r == 0 ? "EOF" : strerror(errno));
			break;
		}
		recvd += (size_t)r;
	}
	cr_assert_lt(recvd, len);
	cr_assert(memcmp(got, data, recvd) == 0, "the %zu bytes echoed are not a prefix", recvd);
	close(fd);
	rb_server_destroy(ts.srv);
	free(data);
	free(got);
}

/* The daemon, spawned: its stderr, read line by line until a line has `want`. */
struct daemon {
	pid_t pid;
	int err;
	char buf[65536];
	size_t len;
};

static const char *daemon_wait_line(struct daemon *d, const char *want)
{
	uint64_t deadline = now_ms() + 20000;

	for (;;) {
		d->buf[d->len] = '\0';
		char *hit = strstr(d->buf, want);
		if (hit && strchr(hit, '\n'))
			return hit;
		cr_assert_lt(now_ms(), deadline, "the daemon never said '%s'; it said: %s", want,
		             d->buf);
		struct pollfd pfd = {.fd = d->err, .events = POLLIN};
		cr_assert_geq(poll(&pfd, 1, 1000), 0);
		if (!(pfd.revents & (POLLIN | POLLHUP)))
			continue;
		if (d->len + 1 >= sizeof(d->buf))
			d->len = 0; /* old lines: not what we wait for */
		ssize_t r = read(d->err, d->buf + d->len, sizeof(d->buf) - 1 - d->len);
		cr_assert_gt(r, 0, "the daemon's stderr closed: %s", d->buf);
		d->len += (size_t)r;
	}
}

static void daemon_start(struct daemon *d, const char *const *args)
{
	const char *bin = getenv("REBOUND_BIN");
	const char *argv[16];
	size_t n = 0;
	int e[2];

	cr_assert_not_null(bin, "REBOUND_BIN is not set (run through meson test)");
	argv[n++] = bin;
	while (*args && n < 15)
		argv[n++] = *args++;
	argv[n] = NULL;
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	d->len = 0;
	d->pid = fork();
	cr_assert_geq(d->pid, 0);
	if (d->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
		dup2(e[1], 2);
		execve(bin, (char *const *)argv, th_child_env(NULL));
		_exit(121);
	}
	close(e[1]);
	d->err = e[0];
}

/* Ask for a stats line until `field` reaches `value` (the kernel echoes
 * while the worker sleeps: its counters follow within their tick). */
static void daemon_wait_stat(struct daemon *d, const char *field, unsigned long value)
{
	char want[64];
	uint64_t deadline = now_ms() + 20000;

	snprintf(want, sizeof(want), "\"%s\":%lu,", field, value);
	for (;;) {
		d->len = 0;
		kill(d->pid, SIGUSR1);
		const char *line = daemon_wait_line(d, "stats {");
		if (strstr(line, want))
			return;
		cr_assert_lt(now_ms(), deadline, "%s never came: %s", want, line);
		poll(NULL, 0, 20); /* not a wait for an event: the pace of asking */
	}
}

/*
 * 10,000 idle connections, each served once (one byte echoed), held open,
 * then closed, against the daemon in its own process (one process would
 * need 20,000 descriptors): every one served, no worker memory for them,
 * every one closed cleanly, and the daemon exits 0 (under ASan: no leak).
 */
Test(sockmap, ten_thousand_idle_connections, .timeout = 300)
{
	enum { N = 10000 };
	static int fds[N];
	struct daemon d;
	const char *line;
	char b = 'i';
	int port, st;

	need_sockmap();
	raise_nofile(N + 512);
	daemon_start(&d, ARGS("--engine", "sockmap", "--listen", "tcp://127.0.0.1:0"));
	line = daemon_wait_line(&d, "listening on tcp://127.0.0.1:");
	cr_assert_eq(sscanf(line, "listening on tcp://127.0.0.1:%d", &port), 1);
	for (int i = 0; i < N; i++) {
		fds[i] = th_connect(port);
		cr_assert_eq(send(fds[i], &b, 1, 0), 1);
		cr_assert_eq(recv(fds[i], &b, 1, 0), 1, "connection %d not served", i);
	}
	daemon_wait_stat(&d, "active", N);
	line = daemon_wait_line(&d, "stats {");
	cr_expect_not_null(strstr(line, "\"accepted\":10000,"), "%s", line);
	cr_expect_not_null(strstr(line, "\"refused\":0,"), "%s", line);
	cr_expect_not_null(strstr(line, "\"chunks_allocated\":0,"), "%s", line);
	for (int i = 0; i < N; i++)
		close(fds[i]);
	daemon_wait_stat(&d, "closed", N);
	line = daemon_wait_line(&d, "stats {");
	cr_expect_not_null(strstr(line, "\"resets\":0,"), "%s", line);
	cr_expect_not_null(strstr(line, "\"bytes_out\":10000,"), "%s", line);
	kill(d.pid, SIGTERM);
	daemon_wait_line(&d, "stopped: 10000 connections");
	cr_assert_eq(waitpid(d.pid, &st, 0), d.pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "daemon status %d: %s", st, d.buf);
	close(d.err);
}
