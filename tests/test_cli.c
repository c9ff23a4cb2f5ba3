/* SPDX-License-Identifier: MIT */
/*
 * The rebound executable: bad flags and values (exit 2, one line naming the
 * value), unavailable engines (exit 3), listen failures (exit 1), and the
 * daemon's life: traffic, SIGTERM, summary, exit 0 (under ASan in CI, so a
 * leak fails this test), and a second signal that exits at once.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <stddef.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "helpers.h"
#include "rb_config.h"

struct proc {
	pid_t pid;
	int out; /* stdout, read end */
	int err; /* stderr, read end */
	bool engine_line_seen;
};

static const char *rebound_bin(void)
{
	const char *b = getenv("REBOUND_BIN");

	cr_assert_not_null(b, "REBOUND_BIN is not set (run through meson test)");
	return b;
}

/*
 * Spawn rebound with args; extra_env adds variables; fd3 >= 0 becomes the
 * child's descriptor 3 and LISTEN_PID is set to the child's own pid (through
 * a shell that execs rebound, so the pid is known), as systemd does.
 */
static void spawn_ex(struct proc *p, const char *const *args, const char *const *extra_env, int fd3)
{
	const char *argv[40];
	int o[2], e[2];
	posix_spawn_file_actions_t fa;
	size_t n = 0;

	if (fd3 >= 0) {
		argv[n++] = "/bin/sh";
		argv[n++] = "-c";
		argv[n++] = "LISTEN_PID=$$ exec \"$0\" \"$@\"";
	}
	argv[n++] = rebound_bin();
	while (*args && n < 39)
		argv[n++] = *args++;
	argv[n] = NULL;
	cr_assert_eq(pipe2(o, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, o[1], 1);
	posix_spawn_file_actions_adddup2(&fa, e[1], 2);
	if (fd3 >= 0)
		posix_spawn_file_actions_adddup2(&fa, fd3, 3);
	cr_assert_eq(posix_spawn(&p->pid, argv[0], &fa, NULL, (char *const *)argv,
	                         th_child_env(extra_env)),
	             0);
	posix_spawn_file_actions_destroy(&fa);
	close(o[1]);
	close(e[1]);
	p->out = o[0];
	p->err = e[0];
}

static void spawn(struct proc *p, const char *const *args)
{
	spawn_ex(p, args, NULL, -1);
}

static int wait_exit(pid_t pid)
{
	int st;

	cr_assert_eq(waitpid(pid, &st, 0), pid);
	if (WIFSIGNALED(st))
		return 1000 + WTERMSIG(st);
	return WEXITSTATUS(st);
}

/* Run to completion; returns the exit status and fills out/err. */
static int run(const char *const *args, char *out, size_t olen, char *err, size_t elen)
{
	struct proc p;

	spawn(&p, args);
	th_slurp(p.out, out, olen);
	th_slurp(p.err, err, elen);
	return wait_exit(p.pid);
}

static void expect_fail(int status, const char *const *args, const char *message)
{
	char out[4096], err[4096];
	int rc = run(args, out, sizeof(out), err, sizeof(err));

	cr_expect_eq(rc, status, "exit %d, want %d (stderr: %s)", rc, status, err);
	cr_expect_str_eq(err, message);
	cr_expect_str_eq(out, "");
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

Test(cli, bad_engine)
{
	expect_fail(2, ARGS("--engine", "kqueue"),
	            "rebound: invalid --engine 'kqueue': expected epoll, poll, select, uring, "
	            "sockmap or auto\n");
}

Test(cli, bad_trigger_and_copy)
{
	expect_fail(2, ARGS("--trigger", "both"),
	            "rebound: invalid --trigger 'both': expected edge or level\n");
	expect_fail(2, ARGS("--copy", "sendfile"),
	            "rebound: invalid --copy 'sendfile': expected writev or splice\n");
}

Test(cli, bad_sizes)
{
	expect_fail(2, ARGS("--chunk-size", "16q"),
	            "rebound: invalid --chunk-size '16q': expected a size such as 4096, 16k or "
	            "1m\n");
	expect_fail(2, ARGS("--chunk-size", "100"),
	            "rebound: invalid --chunk-size '100': must be between 512 and 16777216 "
	            "bytes\n");
	expect_fail(2, ARGS("--conn-buffer", "0"),
	            "rebound: invalid --conn-buffer '0': must be between 1 and 1073741824 "
	            "bytes\n");
	expect_fail(2, ARGS("--conn-buffer", "99999999999999999999999"),
	            "rebound: invalid --conn-buffer '99999999999999999999999': too large\n");
	expect_fail(2, ARGS("--max-memory", "-1"),
	            "rebound: invalid --max-memory '-1': expected a size such as 4096, 16k or "
	            "1m\n");
}

Test(cli, bad_numbers)
{
	expect_fail(2, ARGS("--threads", "0"),
	            "rebound: invalid --threads '0': must be between 1 and 64\n");
	expect_fail(2, ARGS("--threads", "two"),
	            "rebound: invalid --threads 'two': expected a whole number\n");
	expect_fail(2, ARGS("--shutdown-timeout", "1.5"),
	            "rebound: invalid --shutdown-timeout '1.5': expected a whole number\n");
}

Test(cli, bad_listen_urls)
{
	expect_fail(2, ARGS("--listen", "http://127.0.0.1:80"),
	            "rebound: invalid listen URL 'http://127.0.0.1:80': expected "
	            "tcp://HOST:PORT, tcp://[IPV6]:PORT, udp://HOST:PORT, unix:PATH or fd:N\n");
	expect_fail(2, ARGS("--listen", "tcp://127.0.0.1:99999"),
	            "rebound: invalid port '99999' in listen URL 'tcp://127.0.0.1:99999': "
	            "expected 0 to 65535\n");
	expect_fail(2, ARGS("--listen", "tcp://127.0.0.1"),
	            "rebound: invalid listen URL 'tcp://127.0.0.1': expected tcp://HOST:PORT, "
	            "tcp://[IPV6]:PORT, udp://HOST:PORT, unix:PATH or fd:N\n");
	expect_fail(2, ARGS("--listen", "tcp://no.such.host.invalid:7"),
	            "rebound: invalid host in listen URL 'tcp://no.such.host.invalid:7': not an "
	            "address or known name\n");
	expect_fail(2, ARGS("--listen", "unix:"),
	            "rebound: invalid listen URL 'unix:': empty socket path\n");
}

Test(cli, bad_usage)
{
	expect_fail(2, ARGS("--frobnicate"),
	            "rebound: unknown option '--frobnicate' (see --help)\n");
	expect_fail(2, ARGS("--listen"), "rebound: option '--listen' needs a value\n");
	expect_fail(2, ARGS("extra"), "rebound: unexpected argument 'extra' (see --help)\n");
	/* Level triggering is what poll and select do anyway; a completion
	 * engine has no triggers. */
	if (rb_engine_available(RB_ENGINE_URING, NULL, 0) == 0)
		expect_fail(2, ARGS("--engine", "uring", "--trigger", "level"),
		            "rebound: --trigger level is not supported by the uring engine\n");
}

Test(cli, bad_uring_flags)
{
	expect_fail(2, ARGS("--uring-entries", "0"),
	            "rebound: invalid --uring-entries '0': must be between 1 and 32768\n");
	expect_fail(2, ARGS("--uring-buffers", "1000"),
	            "rebound: invalid --uring-buffers '1000': must be a power of two (1, 2, 4 ... "
	            "32768)\n");
	expect_fail(2, ARGS("--uring-buffers", "65536"),
	            "rebound: invalid --uring-buffers '65536': must be between 1 and 32768\n");
	expect_fail(2, ARGS("--uring-sqpoll", "soon"),
	            "rebound: invalid --uring-sqpoll 'soon': expected a whole number\n");
	expect_fail(2, ARGS("--engine", "uring", "--copy", "splice"),
	            "rebound: --copy splice is not supported by the uring engine\n");
}

/* The daemon of a test that failed half-way: not left running. */
static pid_t failed_daemon;

static void kill_failed_daemon(void)
{
	if (failed_daemon > 0) {
		kill(failed_daemon, SIGKILL);
		waitpid(failed_daemon, NULL, 0);
	}
}

/* uring impairs UDP answers too: the flags are taken, printed with the
 * seed, and act (every answer twice, one bit flipped in each). */
Test(cli, uring_udp_impairments, .timeout = 60, .fini = kill_failed_daemon)
{
	const char *const *args =
	        ARGS("--engine", "uring", "--listen", "udp://127.0.0.1:0", "--loss", "0",
	             "--duplicate", "1", "--corrupt", "100%", "--delay", "5~5@0.5", "--seed", "11");
	struct sockaddr_in sin = {.sin_family = AF_INET};
	char line[512], err[4096];
	unsigned char got[64];
	size_t len = 0;
	int port = -1, fd;
	struct proc p;

	if (rb_engine_available(RB_ENGINE_URING, NULL, 0) != 0)
		cr_skip_test("io_uring cannot run here");
	spawn(&p, args);
	failed_daemon = p.pid;
	for (;;) {
		cr_assert_eq(read(p.err, line + len, 1), 1, "daemon exited: %.*s", (int)len, line);
		if (line[len] != '\n') {
			len++;
			cr_assert_lt(len, sizeof(line) - 1);
			continue;
		}
		line[len] = '\0';
		len = 0;
		/* The last start-up line. */
		if (strncmp(line, "rebound: impairments: ", 22) == 0) {
			cr_assert_str_eq(line,
			                 "rebound: impairments: --delay 5ms~5ms@0.5 --duplicate 1 "
			                 "--corrupt 1 --seed 11 (replay with --seed 11)");
			break;
		}
		sscanf(line, "rebound: listening on udp://127.0.0.1:%d", &port);
	}
	cr_assert_gt(port, 0);
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	sin.sin_port = htons((uint16_t)port);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(connect(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(send(fd, "0123456789", 10, 0), 10);
	for (int i = 0; i < 2; i++) {
		int bits = 0;
		cr_assert_eq(recv(fd, got, sizeof(got), 0), 10);
		for (int k = 0; k < 10; k++)
			bits += __builtin_popcount((unsigned)(got[k] ^ (unsigned char)('0' + k)));
		cr_assert_eq(bits, 1, "answer %d: %d bits flipped", i, bits);
	}
	close(fd);
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	th_slurp(p.err, err, sizeof(err));
	failed_daemon = 0;
	cr_assert_eq(wait_exit(p.pid), 0, "daemon exit status (stderr: %s)", err);
	close(p.out);
}

/* Built without liburing, or io_uring refused here: exit 3 naming the cause;
 * otherwise it is listed. (test_uring.c runs it, and makes it unavailable.) */
Test(cli, engine_uring_availability)
{
	char out[256], err[512], why[256] = "", msg[300];

	if (rb_engine_available(RB_ENGINE_URING, why, sizeof(why)) == 0) {
		cr_assert_eq(run(ARGS("--list-engines"), out, sizeof(out), err, sizeof(err)), 0);
		/* UNIX and UDP listeners, relays, discard, chargen, sockperf, the
		 * timeouts and the impairments (TCP and UDP). */
		cr_assert_not_null(strstr(out, "uring unix udp relay services timeouts impair\n"),
		                   "%s", out);
		return;
	}
#if !RB_HAVE_URING
	cr_assert_str_eq(why, "engine 'uring' is not available: rebound was built without "
	                      "liburing");
#endif
	snprintf(msg, sizeof(msg), "rebound: %s\n", why);
	expect_fail(3, ARGS("--engine", "uring", "--listen", "tcp://127.0.0.1:0"), msg);
}

Test(cli, listen_in_use)
{
	char msg[256];
	int fd, port;
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t len = sizeof(sin);
	char url[64];

	fd = socket(AF_INET, SOCK_STREAM, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	getsockname(fd, (struct sockaddr *)&sin, &len);
	port = ntohs(sin.sin_port);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(msg, sizeof(msg), "rebound: cannot listen on '%s': Address already in use\n", url);
	expect_fail(1, ARGS("--listen", url), msg);
	close(fd);
}

Test(cli, help_and_version)
{
	char out[8192], err[1024];

	cr_assert_eq(run(ARGS("--version"), out, sizeof(out), err, sizeof(err)), 0);
	cr_assert_str_eq(out, "rebound " RB_VERSION "\n");
	cr_assert_eq(run(ARGS("--help"), out, sizeof(out), err, sizeof(err)), 0);
	cr_assert(strstr(out, "usage: rebound [OPTIONS]") == out);
	cr_assert_not_null(strstr(out, "--conn-buffer SIZE"));
	cr_assert_eq(run(ARGS("--list-engines"), out, sizeof(out), err, sizeof(err)), 0);
	cr_assert_not_null(
	        strstr(out, "epoll unix udp splice relay services level timeouts impair\n"), "%s",
	        out);
}

/* Start the daemon on port 0 and read the port from its "listening on" line. */
static int start_daemon(struct proc *p, const char *const *extra)
{
	const char *args[16] = {"--listen", "tcp://127.0.0.1:0"};
	size_t n = 2;
	char line[512];
	size_t len = 0;
	int port = -1;

	while (*extra)
		args[n++] = *extra++;
	args[n] = NULL;
	spawn(p, args);
	/* Listener lines, then the engine line, which ends the start-up output. */
	for (;;) {
		ssize_t r = read(p->err, line + len, 1);
		cr_assert_eq(r, 1, "daemon exited before listening: %.*s", (int)len, line);
		if (line[len] != '\n') {
			len++;
			cr_assert_lt(len, sizeof(line) - 1);
			continue;
		}
		line[len] = '\0';
		len = 0;
		if (strncmp(line, "rebound: engine ", 16) == 0)
			break;
		if (strncmp(line, "rebound: relaying to ", 21) == 0 ||
		    strncmp(line, "rebound: service ", 17) == 0)
			continue;
		cr_assert_eq(sscanf(line, "rebound: listening on tcp://127.0.0.1:%d", &port), 1,
		             "unexpected line: %s", line);
	}
	cr_assert_gt(port, 0);
	p->engine_line_seen = true;
	return port;
}

Test(cli, daemon_serves_and_stops_cleanly, .timeout = 60)
{
	const size_t len = 3u << 20;
	unsigned char *data = malloc(len);
	struct proc p;
	char err[4096];
	int port;

	th_fill(data, len, 77);
	port = start_daemon(&p, ARGS("--conn-buffer", "64k"));
	struct th_stream s[3];
	for (int i = 0; i < 3; i++)
		s[i] = (struct th_stream){.fd = th_connect(port),
		                          .data = data + i,
		                          .len = len - (size_t)i,
		                          .rng = (uint64_t)i};
	th_run_streams(s, 3);
	for (int i = 0; i < 3; i++)
		close(s[i].fd);
	/* An idle connection still open at shutdown (one round trip: accepted). */
	int idle = th_connect(port);
	char b = 'x';
	cr_assert_eq(send(idle, &b, 1, 0), 1);
	cr_assert_eq(recv(idle, &b, 1, 0), 1);
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	th_slurp(p.err, err, sizeof(err));
	cr_assert_eq(wait_exit(p.pid), 0, "daemon exit status (stderr: %s)", err);
	cr_assert(p.engine_line_seen);
	char want[256];
	snprintf(want, sizeof(want),
	         "rebound: stopped: 4 connections, %zu bytes in, %zu bytes out, engine epoll\n",
	         3 * len - 3 + 1, 3 * len - 3 + 1);
	cr_assert_not_null(strstr(err, want), "no summary line '%s' in: %s", want, err);
	/* The idle connection was closed cleanly: EOF, not a reset. */
	cr_assert_eq(recv(idle, &b, 1, 0), 0);
	close(idle);
	close(p.out);
	free(data);
}

/*
 * A peer that never reads keeps output pending: connect one and write until
 * the daemon's stats (SIGUSR1) show it paused at its 1 MiB cap.
 */
static int connect_paused_peer(struct proc *p, int port, const unsigned char *data, size_t len)
{
	int fd = th_connect_bufs(port, 4096, 4096);

	th_set_nonblock(fd);
	for (;;) {
		char line[4096]; /* a whole stats line */
		size_t n = 0;
		unsigned long buffered = 0;
		while (send(fd, data, len, MSG_NOSIGNAL) > 0)
			;
		cr_assert_eq(kill(p->pid, SIGUSR1), 0);
		while (n < sizeof(line) - 1 && read(p->err, line + n, 1) == 1 && line[n] != '\n')
			n++;
		line[n] = '\0';
		const char *b = strstr(line, "\"buffered\":");
		cr_assert_not_null(b, "no stats line: %s", line);
		cr_assert(strncmp(line, "rebound: stats {", 16) == 0, "%s", line);
		sscanf(b, "\"buffered\":%lu", &buffered);
		if (buffered == 1048576)
			return fd;
		struct pollfd pfd = {.fd = fd, .events = POLLOUT};
		poll(&pfd, 1, 10);
	}
}

Test(cli, second_signal_exits_at_once, .timeout = 60)
{
	const size_t len = 16u << 20;
	unsigned char *data = calloc(1, len);
	struct proc p;
	char err[4096];
	int port, fd;

	port = start_daemon(&p, ARGS("--shutdown-timeout", "3600000"));
	/* A peer paused at its cap keeps the graceful stop waiting. */
	fd = connect_paused_peer(&p, port, data, len);
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	/* The first signal is being handled once the listener is gone. */
	for (;;) {
		struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		int probe = socket(AF_INET, SOCK_STREAM, 0);
		sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		int rc = connect(probe, (struct sockaddr *)&sin, sizeof(sin));
		close(probe);
		if (rc < 0 && errno == ECONNREFUSED)
			break;
		poll(NULL, 0, 5);
	}
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	th_slurp(p.err, err, sizeof(err));
	cr_assert_eq(wait_exit(p.pid), 128 + SIGTERM, "stderr: %s", err);
	close(fd);
	close(p.out);
	free(data);
}

/* A stop that reaches its deadline says what it cut (issue 9, item 2). */
Test(cli, stop_deadline_reports_what_it_cut, .timeout = 60)
{
	const size_t len = 16u << 20;
	unsigned char *data = calloc(1, len);
	unsigned long long bytes = 0;
	unsigned conns = 0;
	struct proc p;
	char err[8192];
	int port, fd;

	port = start_daemon(&p, ARGS("--shutdown-timeout", "300"));
	fd = connect_paused_peer(&p, port, data, len);
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	th_slurp(p.err, err, sizeof(err));
	cr_assert_eq(wait_exit(p.pid), 0, "stderr: %s", err);
	const char *l = strstr(err, "rebound: shutdown deadline reached: ");
	cr_assert_not_null(l, "no deadline line in: %s", err);
	cr_assert_eq(sscanf(l,
	                    "rebound: shutdown deadline reached: %u connection reset, %llu echoed",
	                    &conns, &bytes),
	             2, "%s", l);
	cr_expect_eq(conns, 1);
	/* At least what the server held; the kernel's unsent queue comes on top. */
	cr_expect_geq(bytes, 1048576ull);
	close(fd);
	close(p.out);
	free(data);
}

/* Read one line of the daemon's stderr (without the newline). */
static void read_line(int fd, char *line, size_t len)
{
	size_t n = 0;

	while (n + 1 < len) {
		ssize_t r = read(fd, line + n, 1);
		cr_assert_eq(r, 1, "daemon exited; so far: %.*s", (int)n, line);
		if (line[n] == '\n')
			break;
		n++;
	}
	line[n] = '\0';
}

/*
 * systemd: a socket passed by socket activation (fd 3, LISTEN_FDS=1,
 * LISTEN_PID) is served with its real address reported, and READY=1 then
 * STOPPING=1 arrive on $NOTIFY_SOCKET.
 */
Test(cli, systemd_socket_activation_and_notify, .timeout = 60)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	struct sockaddr_un nsun = {.sun_family = AF_UNIX};
	socklen_t len = sizeof(sin);
	char name[64], env_notify[96], line[256], want[128], msg[256];
	struct proc p;
	int lfd, nfd, c, port;

	lfd = socket(AF_INET, SOCK_STREAM, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(lfd, 16), 0);
	getsockname(lfd, (struct sockaddr *)&sin, &len);
	port = ntohs(sin.sin_port);

	snprintf(name, sizeof(name), "rebound-notify-%d", (int)getpid());
	nfd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	memcpy(nsun.sun_path + 1, name, strlen(name));
	cr_assert_eq(bind(nfd, (struct sockaddr *)&nsun,
	                  (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
	             0);
	snprintf(env_notify, sizeof(env_notify), "NOTIFY_SOCKET=@%s", name);

	spawn_ex(&p, ARGS("--engine", "epoll"), ARGS(env_notify, "LISTEN_FDS=1"), lfd);
	close(lfd);
	read_line(p.err, line, sizeof(line));
	snprintf(want, sizeof(want), "rebound: listening on tcp://127.0.0.1:%d", port);
	cr_assert_str_eq(line, want);
	read_line(p.err, line, sizeof(line));
	cr_assert(strncmp(line, "rebound: engine epoll", 21) == 0, "%s", line);

	ssize_t r = recv(nfd, msg, sizeof(msg) - 1, 0);
	cr_assert_gt(r, 0);
	msg[r] = '\0';
	cr_assert_str_eq(msg, "READY=1\nSTATUS=echoing with the epoll engine");

	c = th_connect(port);
	struct th_stream s = {.fd = c, .data = (const unsigned char *)want, .len = strlen(want)};
	th_run_streams(&s, 1);
	close(c);

	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	r = recv(nfd, msg, sizeof(msg) - 1, 0);
	cr_assert_gt(r, 0);
	msg[r] = '\0';
	cr_assert_str_eq(msg, "STOPPING=1");
	th_slurp(p.err, line, sizeof(line));
	cr_assert_eq(wait_exit(p.pid), 0, "stderr: %s", line);
	close(p.out);
	close(nfd);
}

Test(cli, fd_url_must_be_a_socket)
{
	expect_fail(2, ARGS("--listen", "fd:x"),
	            "rebound: invalid listen URL 'fd:x': expected fd:N, N a descriptor\n");
	expect_fail(1, ARGS("--listen", "fd:0"),
	            "rebound: cannot use 'fd:0': Socket operation on non-socket\n");
}

/* Issue 9: the same listen URL twice, an over-long UNIX path (exit 2, the
 * whole message), and the new flags' bad values. */
Test(cli, reliability_flags_and_urls)
{
	char path[301], url[320], msg[512];

	expect_fail(2, ARGS("-l", "tcp://127.0.0.1:7990", "-l", "tcp://127.0.0.1:7990"),
	            "rebound: listen URL 'tcp://127.0.0.1:7990' is given twice\n");
	memset(path, 'p', 300);
	path[0] = '/';
	path[300] = '\0';
	snprintf(url, sizeof(url), "unix:%s", path);
	snprintf(msg, sizeof(msg),
	         "rebound: invalid listen URL '%s': socket path longer than 107 bytes\n", url);
	expect_fail(2, ARGS("-l", url), msg);
	expect_fail(2, ARGS("--keepalive", "60,0"),
	            "rebound: invalid --keepalive '60,0,4': expected off or IDLE[,INTVL,CNT] in "
	            "seconds (idle and interval 1 to 32767, count 1 to 127)\n");
	expect_fail(2, ARGS("--keepalive", "1,2,3,4"),
	            "rebound: invalid --keepalive '1,2,3,4': expected off or IDLE[,INTVL,CNT] in "
	            "seconds (idle and interval 1 to 32767, count 1 to 127)\n");
	expect_fail(2, ARGS("--unix-mode", "0888"),
	            "rebound: invalid --unix-mode '0888': expected an octal mode from 0 to 0777, "
	            "such as 0660\n");
	expect_fail(2, ARGS("--udp-rate", "-5"),
	            "rebound: invalid --udp-rate '-5': expected a whole number\n");
	expect_fail(2, ARGS("--user-timeout", "3000000000"),
	            "rebound: invalid --user-timeout '3000000000': must be between 0 and "
	            "2147483647\n");
	expect_fail(2, ARGS("--user-timeout", "9999999999"),
	            "rebound: invalid --user-timeout '9999999999': too large\n");
}

/* Relay and service flags: each bad value named, exit 2. */
Test(cli, relay_and_service_flags)
{
	expect_fail(
	        2, ARGS("--forward", "http://127.0.0.1:80"),
	        "rebound: invalid --forward URL 'http://127.0.0.1:80': expected tcp://HOST:PORT, "
	        "tcp://[IPV6]:PORT or unix:PATH\n");
	expect_fail(2, ARGS("--forward", "tcp://127.0.0.1:0"),
	            "rebound: invalid port '0' in --forward URL 'tcp://127.0.0.1:0': expected 1 "
	            "to 65535\n");
	expect_fail(2, ARGS("--forward", "tcp://no.such.host.invalid:7"),
	            "rebound: invalid host in --forward URL 'tcp://no.such.host.invalid:7': not "
	            "an address or known name\n");
	expect_fail(2, ARGS("--forward", "tcp://127.0.0.1:9", "-l", "udp://127.0.0.1:0"),
	            "rebound: listen URL 'udp://127.0.0.1:0': --forward relays TCP and UNIX "
	            "stream listeners, not UDP\n");
	expect_fail(2, ARGS("--service", "daytime"),
	            "rebound: invalid --service 'daytime': expected echo, discard, chargen or "
	            "sockperf\n");
	expect_fail(2, ARGS("--service", "discard", "--forward", "tcp://127.0.0.1:9"),
	            "rebound: --forward relays bytes: it cannot be combined with --service "
	            "discard\n");
	expect_fail(2, ARGS("--connect-timeout", "0"),
	            "rebound: invalid --connect-timeout '0': must be between 1 and 3600000\n");
	if (rb_engine_available(RB_ENGINE_URING, NULL, 0) == 0) {
		/* The uring engine serves UDP, but relays only streams, as the
		 * readiness engines do. */
		expect_fail(
		        2,
		        ARGS("--engine", "uring", "--forward", "tcp://127.0.0.1:9", "-l",
		             "udp://127.0.0.1:0"),
		        "rebound: listen URL 'udp://127.0.0.1:0': --forward relays TCP and UNIX "
		        "stream listeners, not UDP\n");
	}
}

/*
 * A relay whose upstream refuses: each client gets an RST, each failure is
 * counted and logged (rate-limited), and the daemon stops cleanly with no
 * leak (LeakSanitizer in the sanitized build makes a leak a failing exit).
 * On a readiness engine and on the completion engine.
 */
static void relay_refused_no_leak(const char *engine)
{
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t slen = sizeof(sin);
	char url[64], err[4096];
	struct proc p;
	int lfd, port, up;

	/* A port that was just ours and is closed now: refused. */
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	cr_assert_eq(bind(lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	getsockname(lfd, (struct sockaddr *)&sin, &slen);
	up = ntohs(sin.sin_port);
	close(lfd);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", up);
	port = start_daemon(&p, ARGS("--engine", engine, "--forward", url));
	for (int i = 0; i < 3; i++) {
		int fd = th_connect(port);
		char b;
		cr_assert_eq(recv(fd, &b, 1, 0), -1);
		cr_assert_eq(errno, ECONNRESET);
		close(fd);
	}
	cr_assert_eq(kill(p.pid, SIGTERM), 0);
	th_slurp(p.err, err, sizeof(err));
	cr_assert_eq(wait_exit(p.pid), 0, "daemon exit status (stderr: %s)", err);
	char want[128];
	snprintf(want, sizeof(want),
	         "rebound: upstream %s: Connection refused (0 more suppressed)\n", url);
	cr_assert_not_null(strstr(err, want), "no '%s' in: %s", want, err);
	cr_assert_not_null(strstr(err, "rebound: stopped: 3 connections, 0 bytes in, 0 bytes out"),
	                   "%s", err);
	close(p.out);
}

Test(cli, relay_upstream_refused_no_leak)
{
	relay_refused_no_leak("epoll");
}

Test(cli, relay_upstream_refused_no_leak_uring)
{
	if (rb_engine_available(RB_ENGINE_URING, NULL, 0) != 0)
		cr_skip_test("io_uring cannot run here");
	relay_refused_no_leak("uring");
}

/* The test-bed flags: each bad value named, exit 2. */
Test(cli, testbed_flags)
{
	expect_fail(2, ARGS("--cpus", "0,x"),
	            "rebound: invalid --cpus '0,x': expected a list such as 0,2-3\n");
	expect_fail(2, ARGS("--cpus", "4000"),
	            "rebound: invalid --cpus: CPU 4000 is not one this process may run on\n");
	expect_fail(2, ARGS("--threads", "2", "--cpus", "0"),
	            "rebound: invalid --cpus: 1 CPU for 2 threads (one per thread)\n");
	expect_fail(2, ARGS("--log-format", "xml"),
	            "rebound: invalid --log-format 'xml': expected text or json\n");
	expect_fail(2, ARGS("--stats-interval", "5"),
	            "rebound: invalid --stats-interval '5': must be 0 (off) or at least 10\n");
	expect_fail(2, ARGS("--max-conns", "-1"),
	            "rebound: invalid --max-conns '-1': expected a whole number\n");
	expect_fail(2, ARGS("--idle-timeout", "90000000"),
	            "rebound: invalid --idle-timeout '90000000': must be between 0 and 86400000\n");
	/* The uring engine checks the same range (and takes the flag). */
	if (rb_engine_available(RB_ENGINE_URING, NULL, 0) == 0)
		expect_fail(2, ARGS("--engine", "uring", "--write-timeout", "90000000"),
		            "rebound: invalid --write-timeout '90000000': must be between 0 and "
		            "86400000\n");
}
