/* SPDX-License-Identifier: MIT */
/*
 * The test-bed daemon flags of issue 12, through the rebound executable:
 * --pidfile (its life cycle: refused while it names a running process,
 * a stale one replaced, written once listening, removed at exit), --daemon
 * (the invoking process exits 0 only once the daemon listens, or with the
 * daemon's own start-up error and status), --logfile, and --metrics on the
 * command line.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

#define WAIT_MS 20000

struct child {
	pid_t pid;
	int out, err; /* read ends of its stdout and stderr */
};

static const char *bin(void)
{
	const char *b = getenv("REBOUND_BIN");

	cr_assert_not_null(b, "REBOUND_BIN is not set (run through meson test)");
	return b;
}

#define ARGV(...) ((const char *const[]){__VA_ARGS__, NULL})

/* rebound with args, its stdout and stderr on pipes. */
static void start(struct child *c, const char *const *args)
{
	const char *argv[32];
	posix_spawn_file_actions_t fa;
	int o[2], e[2];
	size_t n = 0;

	argv[n++] = bin();
	for (; *args; args++) {
		cr_assert_lt(n, 31);
		argv[n++] = *args;
	}
	argv[n] = NULL;
	cr_assert_eq(pipe2(o, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, o[1], STDOUT_FILENO);
	posix_spawn_file_actions_adddup2(&fa, e[1], STDERR_FILENO);
	cr_assert_eq(
	        posix_spawn(&c->pid, argv[0], &fa, NULL, (char *const *)argv, th_child_env(NULL)),
	        0);
	posix_spawn_file_actions_destroy(&fa);
	close(o[1]);
	close(e[1]);
	c->out = o[0];
	c->err = e[0];
}

/* Its exit status, or 1000 + the signal that ended it. */
static int reap(pid_t pid)
{
	int st;

	cr_assert_eq(waitpid(pid, &st, 0), pid, "waitpid %d: %s", (int)pid, strerror(errno));
	return WIFSIGNALED(st) ? 1000 + WTERMSIG(st) : WEXITSTATUS(st);
}

/* Run to the end: status, and what it printed. */
static int run(const char *const *args, char *out, size_t olen, char *err, size_t elen)
{
	struct child c;

	start(&c, args);
	th_slurp(c.out, out, olen);
	th_slurp(c.err, err, elen);
	return reap(c.pid);
}

static void expect_exit(int status, const char *const *args, const char *message)
{
	char out[1024], err[2048];
	int rc = run(args, out, sizeof(out), err, sizeof(err));

	cr_expect_eq(rc, status, "exit %d, want %d (stderr: %s)", rc, status, err);
	cr_expect_str_eq(err, message);
	cr_expect_str_eq(out, "");
}

/* One line of fd (the newline dropped). */
static void read_line(int fd, char *line, size_t len)
{
	size_t n = 0;

	for (;;) {
		ssize_t r = read(fd, line + n, 1);
		cr_assert_eq(r, 1, "EOF; so far: %.*s", (int)n, line);
		if (line[n] == '\n')
			break;
		cr_assert_lt(++n, len - 1);
	}
	line[n] = '\0';
}

/* The start-up lines up to the engine line: the echo port, the metrics port. */
static void read_startup(int fd, int *port, int *metrics_port)
{
	char line[512];

	*port = *metrics_port = -1;
	for (;;) {
		read_line(fd, line, sizeof(line));
		if (strncmp(line, "rebound: engine ", 16) == 0)
			return;
		if (sscanf(line, "rebound: listening on tcp://127.0.0.1:%d", port) == 1)
			continue;
		cr_assert_eq(sscanf(line, "rebound: metrics on tcp://127.0.0.1:%d", metrics_port),
		             1, "unexpected line: %s", line);
	}
}

/* A scratch directory per test, and paths in it. */
static char dir[64];

static void setup_dir(void)
{
	snprintf(dir, sizeof(dir), "/tmp/rebound-daemon-XXXXXX");
	cr_assert_not_null(mkdtemp(dir));
}

static void teardown_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0) {
		/* Leftovers in /tmp only. */
	}
}

static const char *in_dir(char *buf, size_t len, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
	return buf;
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f);
	fputs(text, f);
	fclose(f);
}

/* The whole file, or "" if there is none. */
static void read_file(const char *path, char *buf, size_t len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	buf[0] = '\0';
	if (fd >= 0)
		th_slurp(fd, buf, len);
}

static bool exists(const char *path)
{
	struct stat st;

	return stat(path, &st) == 0;
}

/* A PID nobody has: a child that has come and gone. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();

	cr_assert_geq(pid, 0);
	if (pid == 0)
		_exit(0);
	cr_assert_eq(reap(pid), 0);
	return pid;
}

/* A port bound and listening here, so nobody else can have it. */
static int busy_port(int *fd)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(sin);

	*fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_eq(bind(*fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(*fd, 1), 0);
	getsockname(*fd, (struct sockaddr *)&sin, &len);
	return ntohs(sin.sin_port);
}

/* Echo a few bytes through port and check them. */
static void echo_once(int port, const char *msg)
{
	struct th_stream s = {
	        .fd = th_connect(port), .data = (const void *)msg, .len = strlen(msg)};

	th_run_streams(&s, 1);
	close(s.fd);
}

/* GET path over HTTP/1.1 on 127.0.0.1:port; the whole response in buf. */
static void http_get(int port, const char *path, char *buf, size_t len)
{
	char req[128];
	int fd = th_connect(port);

	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
	cr_assert_eq(send(fd, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req));
	th_slurp(fd, buf, len);
}

TestSuite(daemon, .init = setup_dir, .fini = teardown_dir);

Test(daemon, bad_values)
{
	expect_exit(2, ARGV("--pidfile", ""), "rebound: invalid --pidfile '': expected a path\n");
	expect_exit(2, ARGV("--logfile", ""), "rebound: invalid --logfile '': expected a path\n");
	expect_exit(2, ARGV("--metrics", "bogus"),
	            "rebound: invalid --metrics URL 'bogus': expected tcp://HOST:PORT, "
	            "tcp://[IPV6]:PORT or unix:PATH\n");
	expect_exit(2, ARGV("--listen", "tcp://127.0.0.1:0", "--metrics", "tcp://127.0.0.1:70000"),
	            "rebound: invalid port '70000' in --metrics URL 'tcp://127.0.0.1:70000': "
	            "expected 0 to 65535\n");
	expect_exit(2, ARGV("--metrics"), "rebound: option '--metrics' needs a value\n");
}

/* --metrics on an address in use: exit 1, the address named. */
Test(daemon, metrics_address_in_use)
{
	char url[64], msg[160];
	int fd, port = busy_port(&fd);

	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(msg, sizeof(msg),
	         "rebound: cannot listen on --metrics URL '%s': Address already in use\n", url);
	expect_exit(1, ARGV("--listen", "tcp://127.0.0.1:0", "--metrics", url), msg);
	close(fd);
}

/* A pidfile naming a running process (this test's) refuses the start and is
 * left alone; so is one that holds no PID. */
Test(daemon, pidfile_refusals)
{
	char path[128], msg[256], pid[32], now[64];

	in_dir(path, sizeof(path), "live.pid");
	snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	write_file(path, pid);
	snprintf(msg, sizeof(msg), "rebound: --pidfile '%s' names a running process (PID %d)\n",
	         path, (int)getpid());
	expect_exit(2, ARGV("--listen", "tcp://127.0.0.1:0", "--pidfile", path), msg);
	read_file(path, now, sizeof(now));
	cr_assert_str_eq(now, pid);

	in_dir(path, sizeof(path), "other.pid");
	write_file(path, "not a pid\n");
	snprintf(msg, sizeof(msg),
	         "rebound: --pidfile '%s' does not hold a PID: not replacing it\n", path);
	expect_exit(2, ARGV("--listen", "tcp://127.0.0.1:0", "--pidfile", path), msg);
	read_file(path, now, sizeof(now));
	cr_assert_str_eq(now, "not a pid\n");

	/* Where it cannot be written: exit 1, the path and the reason. */
	in_dir(path, sizeof(path), "no-such-dir/x.pid");
	snprintf(msg, sizeof(msg),
	         "rebound: cannot write --pidfile '%s': No such file or directory\n", path);
	expect_exit(1, ARGV("--listen", "tcp://127.0.0.1:0", "--pidfile", path), msg);
}

/* Nothing is written by a start that could not bind. */
Test(daemon, pidfile_only_once_listening)
{
	char path[128], url[64], msg[160];
	int fd, port = busy_port(&fd);

	in_dir(path, sizeof(path), "r.pid");
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(msg, sizeof(msg), "rebound: cannot listen on '%s': Address already in use\n", url);
	expect_exit(1, ARGV("--listen", url, "--pidfile", path), msg);
	cr_assert(!exists(path), "a pidfile was written by a start that failed");
	close(fd);
}

/*
 * The life cycle: a stale pidfile is replaced by ours once we listen; a
 * second start with it is refused, naming us; SIGTERM removes it.
 */
Test(daemon, pidfile_life_cycle, .timeout = 60)
{
	char path[128], want[32], got[64], msg[256], err[4096];
	struct child c;
	int port, mport;

	in_dir(path, sizeof(path), "r.pid");
	snprintf(want, sizeof(want), "%d\n", (int)dead_pid());
	write_file(path, want);
	start(&c, ARGV("--listen", "tcp://127.0.0.1:0", "--pidfile", path));
	read_startup(c.err, &port, &mport);
	/* Written before the start-up lines: it names us now. */
	snprintf(want, sizeof(want), "%d\n", (int)c.pid);
	read_file(path, got, sizeof(got));
	cr_assert_str_eq(got, want);
	echo_once(port, "still here");

	snprintf(msg, sizeof(msg), "rebound: --pidfile '%s' names a running process (PID %d)\n",
	         path, (int)c.pid);
	expect_exit(2, ARGV("--listen", "tcp://127.0.0.1:0", "--pidfile", path), msg);

	cr_assert_eq(kill(c.pid, SIGTERM), 0);
	th_slurp(c.err, err, sizeof(err));
	cr_assert_eq(reap(c.pid), 0, "stderr: %s", err);
	cr_assert(!exists(path), "the pidfile outlived the process");
	close(c.out);
}

/* --logfile alone: stdout and stderr appended to it, nothing on the pipes. */
Test(daemon, logfile_appends, .timeout = 60)
{
	char log[128], text[8192], out[64], err[64];
	struct child c;
	uint64_t waited = 0;
	const char *l;
	int port = -1;

	in_dir(log, sizeof(log), "r.log");
	write_file(log, "an earlier line\n");
	start(&c, ARGV("--listen", "tcp://127.0.0.1:0", "--logfile", log));
	/* Its stderr is the file: wait (bounded) for the engine line there. */
	for (;;) {
		read_file(log, text, sizeof(text));
		if (strstr(text, "rebound: engine "))
			break;
		cr_assert_lt(waited, WAIT_MS, "no engine line in the log: %s", text);
		poll(NULL, 0, 10);
		waited += 10;
	}
	cr_assert(strncmp(text, "an earlier line\nrebound: listening on tcp://127.0.0.1:", 54) == 0,
	          "%s", text);
	l = strstr(text, "listening on tcp://127.0.0.1:");
	cr_assert_eq(sscanf(l, "listening on tcp://127.0.0.1:%d", &port), 1);
	echo_once(port, "logged");
	cr_assert_eq(kill(c.pid, SIGTERM), 0);
	th_slurp(c.out, out, sizeof(out));
	th_slurp(c.err, err, sizeof(err));
	cr_assert_eq(reap(c.pid), 0);
	cr_assert_str_eq(out, "");
	cr_assert_str_eq(err, "");
	read_file(log, text, sizeof(text));
	cr_assert_not_null(strstr(text, "rebound: stopped: 1 connections, 6 bytes in, 6 bytes out"),
	                   "%s", text);
}

/* /proc/PID/fd/N: where a descriptor of a process points. */
static void fd_target(pid_t pid, int fd, char *buf, size_t len)
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/%d/fd/%d", (int)pid, fd);
	n = readlink(link, buf, len - 1);
	cr_assert_gt(n, 0, "%s: %s", link, strerror(errno));
	buf[n] = '\0';
}

static pid_t read_pidfile(const char *path)
{
	char text[32];
	int pid = 0;

	read_file(path, text, sizeof(text));
	cr_assert_eq(sscanf(text, "%d\n", &pid), 1, "pidfile: '%s'", text);
	return (pid_t)pid;
}

/*
 * --daemon with --logfile, --pidfile and --metrics: the command returns 0
 * once the daemon listens; the log has the listening lines, the pidfile
 * names the daemon (not the command, not a session leader, no terminal);
 * it echoes and serves metrics; SIGTERM stops it cleanly (its exit status
 * is ours to see: this test adopts orphans) and removes the pidfile.
 */
Test(daemon, daemon_with_logfile, .timeout = 60)
{
	char pidf[128], log[128], text[8192], target[PATH_MAX], http[65536], want[128];
	struct child c;
	int port = -1, mport = -1;
	pid_t d;
	const char *l;

	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	in_dir(pidf, sizeof(pidf), "d.pid");
	in_dir(log, sizeof(log), "d.log");
	start(&c, ARGV("--daemon", "--listen", "tcp://127.0.0.1:0", "--pidfile", pidf, "--logfile",
	               log, "--metrics", "tcp://127.0.0.1:0"));
	th_slurp(c.out, text, sizeof(text));
	cr_assert_str_eq(text, "");
	th_slurp(c.err, text, sizeof(text));
	cr_assert_str_eq(text, "");
	cr_assert_eq(reap(c.pid), 0);

	/* Ready by the time the command returned. */
	d = read_pidfile(pidf);
	cr_assert_neq(d, c.pid);
	cr_assert_neq(getsid(d), getsid(0), "the daemon is still in our session");
	cr_assert_neq(getsid(d), d, "the daemon leads its session (it could get a terminal)");
	fd_target(d, 0, target, sizeof(target));
	cr_assert_str_eq(target, "/dev/null");
	fd_target(d, 2, target, sizeof(target));
	cr_assert_str_eq(target, log);
	read_file(log, text, sizeof(text));
	l = strstr(text, "rebound: listening on tcp://127.0.0.1:");
	cr_assert_not_null(l, "%s", text);
	cr_assert_eq(sscanf(l, "rebound: listening on tcp://127.0.0.1:%d", &port), 1);
	l = strstr(text, "rebound: metrics on tcp://127.0.0.1:");
	cr_assert_not_null(l, "%s", text);
	cr_assert_eq(sscanf(l, "rebound: metrics on tcp://127.0.0.1:%d", &mport), 1);
	cr_assert_not_null(strstr(text, "rebound: engine "), "%s", text);

	echo_once(port, "daemon");
	http_get(mport, "/metrics", http, sizeof(http));
	cr_assert(strncmp(http, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", http);
	cr_assert_not_null(strstr(http, "\nrebound_bytes_in_total 6\n"), "%s", http);

	cr_assert_eq(kill(d, SIGTERM), 0);
	cr_assert_eq(reap(d), 0);
	cr_assert(!exists(pidf), "the pidfile outlived the daemon");
	read_file(log, text, sizeof(text));
	snprintf(want, sizeof(want), "rebound: stopped: 1 connections, 6 bytes in, 6 bytes out");
	cr_assert_not_null(strstr(text, want), "%s", text);
}

/* Without --logfile: stdio to /dev/null. */
Test(daemon, daemon_to_devnull, .timeout = 60)
{
	char pidf[128], target[PATH_MAX], text[1024];
	struct child c;
	pid_t d;

	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	in_dir(pidf, sizeof(pidf), "d.pid");
	start(&c, ARGV("--daemon", "--listen", "tcp://127.0.0.1:0", "--pidfile", pidf));
	th_slurp(c.out, text, sizeof(text));
	th_slurp(c.err, text, sizeof(text));
	cr_assert_str_eq(text, "");
	cr_assert_eq(reap(c.pid), 0);
	d = read_pidfile(pidf);
	for (int fd = 0; fd < 3; fd++) {
		fd_target(d, fd, target, sizeof(target));
		cr_assert_str_eq(target, "/dev/null", "fd %d", fd);
	}
	cr_assert_eq(kill(d, SIGTERM), 0);
	cr_assert_eq(reap(d), 0);
	cr_assert(!exists(pidf));
}

/*
 * A start-up error in the daemon reaches the shell: the same line and exit
 * status as without --daemon (and the log file has it too); nothing is
 * left running or written.
 */
Test(daemon, daemon_startup_errors, .timeout = 60)
{
	char pidf[128], log[128], url[64], msg[256], text[4096];
	int fd, port = busy_port(&fd);

	cr_assert_eq(prctl(PR_SET_CHILD_SUBREAPER, 1), 0);
	in_dir(pidf, sizeof(pidf), "d.pid");
	in_dir(log, sizeof(log), "d.log");
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(msg, sizeof(msg), "rebound: cannot listen on '%s': Address already in use\n", url);
	expect_exit(1, ARGV("--daemon", "--listen", url, "--pidfile", pidf, "--logfile", log), msg);
	cr_assert(!exists(pidf));
	read_file(log, text, sizeof(text));
	cr_assert_str_eq(text, msg);

	expect_exit(2, ARGV("--daemon", "--listen", "tcp://127.0.0.1:0", "--threads", "0"),
	            "rebound: invalid --threads '0': must be between 1 and 64\n");
	expect_exit(
	        2,
	        ARGV("--daemon", "--listen", "tcp://127.0.0.1:0", "--metrics", "udp://127.0.0.1:0"),
	        "rebound: invalid --metrics URL 'udp://127.0.0.1:0': expected tcp://HOST:PORT, "
	        "tcp://[IPV6]:PORT or unix:PATH\n");
	/* Refused before going to the background at all. */
	snprintf(text, sizeof(text), "%d\n", (int)getpid());
	write_file(pidf, text);
	snprintf(msg, sizeof(msg), "rebound: --pidfile '%s' names a running process (PID %d)\n",
	         pidf, (int)getpid());
	expect_exit(2, ARGV("--daemon", "--listen", "tcp://127.0.0.1:0", "--pidfile", pidf), msg);
	close(fd);
	/* The daemons that failed are ours to reap, and none is left. */
	for (int st; waitpid(-1, &st, 0) > 0;)
		cr_expect(WIFEXITED(st) && WEXITSTATUS(st) != 0, "a daemon ended with %#x", st);
	cr_assert_eq(errno, ECHILD);
}
