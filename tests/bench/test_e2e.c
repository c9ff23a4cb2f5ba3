// SPDX-License-Identifier: MIT
/*
 * End to end: rebound-bench against echo-helper, correct and broken, and
 * against the real rebound when the build passes it in ($REBOUND). Servers
 * are waited for by reading their "listening on" line, never by sleeping.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "stream.h"

extern char **environ;

#define OUT_MAX 65536

struct server {
	pid_t pid;
	int err_fd; /* its stderr, drained while the bench runs */
	char url[160];
};

struct outcome {
	int status; /* exit status, or 128 + signal */
	char out[OUT_MAX];
	char err[OUT_MAX];
};

static const char *env_path(const char *name)
{
	const char *p = getenv(name);

	cr_assert(p && *p, "$%s is not set (run the tests through meson)", name);
	return p;
}

static pid_t spawn(char *const argv[], int *out_fd, int *err_fd)
{
	posix_spawn_file_actions_t fa;
	int out[2], errp[2];
	pid_t pid;
	int rc;

	cr_assert_eq(pipe2(out, O_CLOEXEC), 0);
	cr_assert_eq(pipe2(errp, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_adddup2(&fa, errp[1], 2);
	rc = posix_spawn(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	cr_assert_eq(rc, 0, "spawn %s: %s", argv[0], strerror(rc));
	close(out[1]);
	close(errp[1]);
	if (out_fd)
		*out_fd = out[0];
	else
		close(out[0]);
	*err_fd = errp[0];
	return pid;
}

/* Reads @fd until a line containing "listening on " arrives; copies the URL after it. */
static void wait_listening(int fd, char *url, size_t len)
{
	char buf[4096];
	size_t have = 0;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		char *at, *nl;
		ssize_t r;

		cr_assert_eq(poll(&p, 1, 20000), 1, "server never said it was listening");
		r = read(fd, buf + have, sizeof(buf) - 1 - have);
		cr_assert_gt(r, 0, "server exited before listening: %.*s", (int)have, buf);
		have += (size_t)r;
		buf[have] = '\0';
		at = strstr(buf, "listening on ");
		if (at && (nl = strchr(at, '\n'))) {
			*nl = '\0';
			snprintf(url, len, "%s", at + strlen("listening on "));
			return;
		}
		cr_assert_lt(have, sizeof(buf) - 1, "no listening line in: %s", buf);
	}
}

static void start_server(struct server *s, char *const argv[])
{
	s->pid = spawn(argv, NULL, &s->err_fd);
	wait_listening(s->err_fd, s->url, sizeof(s->url));
}

static void start_helper(struct server *s, const char *opt, const char *value)
{
	char *argv[] = {(char *)env_path("RBB_ECHO_HELPER"), (char *)opt, (char *)value, NULL};

	if (!opt)
		argv[1] = NULL;
	start_server(s, argv);
}

static int wait_status(pid_t pid)
{
	int st;

	cr_assert_eq(waitpid(pid, &st, 0), pid);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* SIGTERM, then the exit status (0 means a graceful exit). */
static int stop_server(struct server *s)
{
	char buf[4096];

	kill(s->pid, SIGTERM);
	/* Drain stderr to EOF so a chatty server cannot block on a full pipe. */
	while (read(s->err_fd, buf, sizeof(buf)) > 0)
		;
	close(s->err_fd);
	s->err_fd = -1;
	return wait_status(s->pid);
}

static void append(int fd, char *buf, size_t *have, bool *open)
{
	char tmp[4096];
	ssize_t r = read(fd, tmp, sizeof(tmp));

	if (r <= 0) {
		*open = false;
		return;
	}
	if (*have + (size_t)r >= OUT_MAX)
		r = (ssize_t)(OUT_MAX - 1 - *have);
	memcpy(buf + *have, tmp, (size_t)r);
	*have += (size_t)r;
	buf[*have] = '\0';
}

/* Runs rebound-bench with @args against @s; collects its output and status. */
static void run_bench(struct outcome *o, struct server *s, const char *const *args)
{
	char *argv[64];
	int n = 0, out_fd, err_fd;
	size_t have_out = 0, have_err = 0;
	bool out_open = true, err_open = true, srv_open = s && s->err_fd >= 0;
	pid_t pid;

	argv[n++] = (char *)env_path("RBB_BENCH");
	for (; *args; args++)
		argv[n++] = (char *)*args;
	if (s)
		argv[n++] = s->url;
	argv[n] = NULL;
	o->out[0] = o->err[0] = '\0';
	pid = spawn(argv, &out_fd, &err_fd);
	while (out_open || err_open) {
		struct pollfd p[3] = {{.fd = out_open ? out_fd : -1, .events = POLLIN},
		                      {.fd = err_open ? err_fd : -1, .events = POLLIN},
		                      {.fd = srv_open ? s->err_fd : -1, .events = POLLIN}};
		char junk[4096];

		cr_assert_gt(poll(p, 3, 60000), 0, "rebound-bench hung");
		if (p[0].revents)
			append(out_fd, o->out, &have_out, &out_open);
		if (p[1].revents)
			append(err_fd, o->err, &have_err, &err_open);
		if (p[2].revents && read(s->err_fd, junk, sizeof(junk)) <= 0)
			srv_open = false;
	}
	close(out_fd);
	close(err_fd);
	o->status = wait_status(pid);
}

TestSuite(e2e, .timeout = 60);

static struct outcome result;

Test(e2e, correct_server_passes)
{
	const char *args[] = {"-c", "4", "--depth", "4", "-s", "1000", "-d", "1", NULL};
	struct server s;

	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "all correct"), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "4 connected, 0 connect errors"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, dropped_byte_fails_with_its_offset)
{
	const char *args[] = {"-c", "1", "-s", "100", "--seed", "7", "-d", "1", NULL};
	uint64_t seed = rbb_stream_seed(7, 0), k = 1000;
	char want[128];
	struct server s;

	/* The first byte that differs from the stream is where the drop shows. */
	while (rbb_stream_byte(seed, k) == rbb_stream_byte(seed, k + 1))
		k++;
	snprintf(want, sizeof(want), "connection 0: byte mismatch at offset %llu",
	         (unsigned long long)k);
	start_helper(&s, "--drop-at", "1000");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, want), "want '%s' in:\n%s", want, result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, flipped_byte_fails)
{
	const char *args[] = {"-c", "2", "-s", "4K", "--depth", "2", "-d", "1", "--json", NULL};
	struct server s;

	start_helper(&s, "--flip-at", "77777");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "byte mismatch at offset 77777"), "%s", result.err);
	cr_assert_not_null(strstr(result.out, "\"ok\": false"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, stall_fails)
{
	const char *args[] = {"-c", "1", "-d", "5", "--stall-timeout", "0.5", NULL};
	struct server s;

	start_helper(&s, "--stall-at", "5000");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: stall: no progress"), "%s",
	                   result.err);
	cr_assert_not_null(strstr(result.err, "at offset 5000"), "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, early_close_is_a_short_stream)
{
	const char *args[] = {"-c", "1", "-s", "64", "-d", "1", NULL};
	struct server s;

	start_helper(&s, "--close-at", "5000");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.err, "connection 0: short stream: server closed after 4992 of"), "%s",
	        result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, unix_socket_threads_and_message_count)
{
	char dir[] = "/tmp/rbb-e2e-XXXXXX", url[128];
	const char *args[] = {"-c", "8", "--threads", "2", "--depth", "3", "-n", "20000", NULL};
	struct server s;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "unix:%s/echo.sock", dir);
	start_helper(&s, "--listen", url);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "messages     20000 "), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "1280000 bytes echoed, all correct"), "%s",
	                   result.out);
	cr_assert_eq(stop_server(&s), 0);
	rmdir(dir);
}

Test(e2e, open_loop_json_and_hgrm)
{
	char dir[] = "/tmp/rbb-e2e-XXXXXX", hgrm[128], line[256];
	const char *args[] = {"-c",       "5",   "--rate", "2000",   "-d", "0.5",
	                      "--warmup", "0.2", "--json", "--hgrm", hgrm, NULL};
	bool saw_max = false;
	struct server s;
	char *msgs;
	long n;
	FILE *f;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(hgrm, sizeof(hgrm), "%s/lat.hgrm", dir);
	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "\"mode\": \"open\""), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"ok\": true"), "%s", result.out);
	/*
	 * 2000 msg/s for 0.5 s: the schedule, not the server, sets the count.
	 * The bound that matters is the upper one; a loaded CI machine may
	 * push some echoes past the window.
	 */
	msgs = strstr(result.out, "\"messages\": ");
	cr_assert_not_null(msgs, "%s", result.out);
	n = strtol(msgs + strlen("\"messages\": "), NULL, 10);
	cr_assert(n >= 500 && n <= 1100, "%ld messages in 0.5 s at 2000/s", n);
	f = fopen(hgrm, "r");
	cr_assert_not_null(f);
	while (fgets(line, sizeof(line), f))
		saw_max |= !strncmp(line, "#[Max     = ", 12);
	fclose(f);
	cr_assert(saw_max);
	cr_assert_eq(stop_server(&s), 0);
	unlink(hgrm);
	rmdir(dir);
}

Test(e2e, udp_correct_server_passes)
{
	const char *args[] = {"-c", "4", "-s", "512", "-d", "1", NULL};
	struct server s;

	start_helper(&s, "--listen", "udp://127.0.0.1:0");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "all correct"), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "datagrams lost"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

static void start_udp_helper(struct server *s, const char *opt, const char *value)
{
	char *argv[] = {(char *)env_path("RBB_ECHO_HELPER"),
	                (char *)"--listen",
	                (char *)"udp://127.0.0.1:0",
	                (char *)opt,
	                (char *)value,
	                NULL};

	start_server(s, argv);
}

Test(e2e, udp_flipped_byte_fails_with_its_offset)
{
	const char *args[] = {"-c", "1", "-s", "100", "-d", "1", NULL};
	struct server s;

	start_udp_helper(&s, "--flip-at", "1234");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.err,
	               "connection 0: byte mismatch at offset 1234 (udp datagram 12, byte 34)"),
	        "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, udp_silence_is_a_stall)
{
	const char *args[] = {"-c", "1", "-s", "100", "-d", "5", "--stall-timeout", "0.5", NULL};
	struct server s;

	start_udp_helper(&s, "--stall-at", "1000");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: stall: no udp datagram echoed"), "%s",
	                   result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/*
 * Issue 9 item 9: a server that reorders datagrams (rebound's workers share
 * one socket) echoes each exactly once; reordering is counted, not an error.
 */
Test(e2e, udp_reordering_is_counted_not_an_error)
{
	const char *args[] = {"-c", "1",  "-s",   "1024",   "--depth",
	                      "2",  "-n", "1000", "--json", NULL};
	struct server s;

	start_udp_helper(&s, "--udp-swap", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.out, "\"udp_lost\": 0, \"udp_late\": 0, \"udp_reordered\": 500,"),
	        "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"verified_bytes\": 1024000,"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, udp_duplicate_is_an_error)
{
	const char *args[] = {"-c", "1", "-s", "100", "-n", "10", NULL};
	struct server s;

	start_udp_helper(&s, "--udp-dup", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: duplicate udp datagram 0 (offset 0)"),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* Issue 15: idle connections must prove they are served (a first echo at connect). */
Test(e2e, idle_connections_closed_by_the_server_fail)
{
	const char *args[] = {"-c", "10", "--active", "2", "-d", "0.3", "--json", NULL};
	struct server s;

	start_helper(&s, "--max-conns", "4");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.out, "\"connected\": 4, \"connect_errors\": 0, \"unserved\": 6,"),
	        "%s", result.out);
	cr_assert_not_null(strstr(result.err, ": idle connection not served: "), "%s", result.err);
	cr_assert_not_null(strstr(result.err, "6 idle connections were not served"), "%s",
	                   result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, idle_connections_left_in_the_backlog_fail)
{
	const char *args[] = {"-c",  "10",     "--active", "2", "-d", "0.3", "--stall-timeout",
	                      "0.5", "--json", NULL};
	struct server s;

	start_helper(&s, "--accept-max", "4");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.out, "\"connected\": 4, \"connect_errors\": 0, \"unserved\": 6,"),
	        "%s", result.out);
	cr_assert_not_null(
	        strstr(result.err,
	               ": idle connection not served: no echo of its first byte within 1.0 s"),
	        "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, idle_connections_served_pass)
{
	const char *args[] = {"-c", "50", "--active", "3", "-d", "0.3", NULL};
	struct server s;

	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "50 connected, 0 connect errors\n"), "%s",
	                   result.out);
	cr_assert_eq(stop_server(&s), 0);
}

/* Issue 15: --server-pid counts the whole process tree; --cpu-system and the client's CPU. */
Test(e2e, cpu_of_server_tree_client_and_system)
{
	char pid[32], want[64];
	const char *args[] = {"-c",           "2",   "-s",     "1000",
	                      "-d",           "0.3", "--json", "--cpu-system",
	                      "--server-pid", pid,   NULL};
	struct server s;

	start_helper(&s, "--fork-child", NULL);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "\"server_procs\": 2,"), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"client_cpu_s\": "), "%s", result.out);
	snprintf(want, sizeof(want), "\"system_cpus\": %ld,", sysconf(_SC_NPROCESSORS_ONLN));
	cr_assert_not_null(strstr(result.out, want), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"system_cpu_util_by_cpu\": {\"cpu0\": "), "%s",
	                   result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, bad_usage_exits_2_with_one_line)
{
	const char *args[] = {"-c", "0", "tcp://127.0.0.1:1", NULL};

	run_bench(&result, NULL, args);
	cr_assert_eq(result.status, 2);
	cr_assert_str_eq(result.err, "rebound-bench: invalid --connections '0': expected an "
	                             "integer from 1 to 1000000\n");
	cr_assert_str_eq(result.out, "");
}

Test(e2e, refused_connections_fail)
{
	struct server s;
	const char *args[] = {"-c", "2", "-d", "1", NULL};

	/* A port that was just in use and is now closed refuses connections. */
	start_helper(&s, NULL, NULL);
	cr_assert_eq(stop_server(&s), 0);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "%s", result.err);
	cr_assert_not_null(strstr(result.err, "Connection refused"), "%s", result.err);
	cr_assert_not_null(strstr(result.out, "0 connected, 2 connect errors"), "%s", result.out);
}

/* rebound-bench against the real rebound listening on @listen; rebound must exit 0 on SIGTERM. */
static void against_rebound(const char *listen, const char *const *args)
{
	const char *rebound = getenv("REBOUND");
	struct server s;

	if (!rebound || !*rebound)
		cr_skip_test("rebound is not built in this tree");
	char *argv[] = {(char *)rebound, (char *)"--listen", (char *)listen, NULL};

	start_server(&s, argv);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "all correct"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0, "rebound did not exit 0 on SIGTERM");
}

Test(e2e, real_rebound)
{
	const char *args[] = {"-c", "8", "--depth", "4", "-s", "512", "-d", "1", NULL};

	against_rebound("tcp://127.0.0.1:0", args);
}

Test(e2e, real_rebound_udp)
{
	const char *args[] = {"-c", "4", "--depth", "2", "-s", "1000", "-d", "1", NULL};

	against_rebound("udp://127.0.0.1:0", args);
}

Test(e2e, real_rebound_idle_connections_are_served)
{
	const char *args[] = {"-c", "200", "--active", "4", "-s", "64", "-d", "0.5", NULL};

	against_rebound("tcp://127.0.0.1:0", args);
	cr_assert_not_null(strstr(result.out, "200 connected, 0 connect errors\n"), "%s",
	                   result.out);
}

/* The number after @key in @json, or -1. */
static long json_num(const char *json, const char *key)
{
	char k[64];
	const char *at;

	snprintf(k, sizeof(k), "\"%s\": ", key);
	at = strstr(json, k);
	return at ? strtol(at + strlen(k), NULL, 10) : -1;
}

/* Issue 15: --crr against rebound: exact transactions, no errors, no descriptor growth. */
Test(e2e, crr_against_rebound)
{
	const char *rebound = getenv("REBOUND");
	char pid[32];
	const char *args[] = {"--crr",  "-c",           "4", "-n", "2000", "-s", "100",
	                      "--json", "--server-pid", pid, NULL};
	struct server s;

	if (!rebound || !*rebound)
		cr_skip_test("rebound is not built in this tree");
	char *argv[] = {(char *)rebound, (char *)"--listen", (char *)"tcp://127.0.0.1:0", NULL};

	start_server(&s, argv);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_eq(json_num(result.out, "transactions"), 2000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "connected"), 2000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "verified_bytes"), 200000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "count"), 2000, "%s", result.out);
	cr_assert_gt(json_num(result.out, "server_fds_before"), 0, "%s", result.out);
	cr_assert_eq(json_num(result.out, "server_fds_after"),
	             json_num(result.out, "server_fds_before"), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"mode\": \"crr\""), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"ok\": true"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, crr_catches_a_server_that_leaks_descriptors)
{
	char pid[32];
	const char *args[] = {"--crr", "-c", "2", "-n", "50", "--server-pid", pid, NULL};
	struct server s;

	start_helper(&s, "--leak-fds", NULL);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "transactions 50 "), "%s", result.out);
	cr_assert_not_null(strstr(result.err, "rebound-bench: the server's descriptors grew from "),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, crr_finds_a_wrong_byte)
{
	const char *args[] = {"--crr", "-c", "3", "-n", "300", "-s", "2000", NULL};
	struct server s;

	start_helper(&s, "--flip-at", "1500");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, ": byte mismatch at offset 1500: "), "%s",
	                   result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* Issue 15: TCP_INFO in the JSON, at the end and at every --interval; version and timestamp. */
Test(e2e, tcp_info_and_interval_samples_in_the_json)
{
	const char *args[] = {"-c",         "3",   "--depth",    "2",      "-d", "0.5",
	                      "--interval", "0.1", "--tcp-info", "--json", NULL};
	struct server s;
	const char *ti, *iv;

	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "{\"version\": \""), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"timestamp\": \"20"), "%s", result.out);
	ti = strstr(result.out, "\"tcp_info\": {\"samples\": 3, \"rtt_us\": {\"min\": ");
	cr_assert_not_null(ti, "%s", result.out);
	cr_assert_gt(strtol(ti + strlen("\"tcp_info\": {\"samples\": 3, \"rtt_us\": {\"min\": "),
	                    NULL, 10),
	             0, "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"retrans\": "), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"cwnd\": {\"min\": "), "%s", result.out);
	/* Interval lines: JSON on stderr, and the same samples in the report. */
	iv = strstr(result.out, "\"intervals\": [\n  {\"t\": ");
	cr_assert_not_null(iv, "%s", result.out);
	cr_assert_not_null(strstr(iv, "\"tcp_info\": {\"samples\": 3,"), "%s", result.out);
	cr_assert_not_null(strstr(result.err, "{\"t\": "), "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, falling_behind_the_rate_is_reported_and_strict_fails)
{
	const char *args[] = {"-c",  "1",        "--rate", "100000000", "-d",
	                      "0.3", "--strict", "--json", NULL};
	struct server s;

	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "\"rate_behind\": true"), "%s", result.out);
	cr_assert_not_null(strstr(result.err, "rebound-bench: fell behind --rate: "), "%s",
	                   result.err);
	cr_assert_not_null(strstr(result.err, "--strict: the achieved rate"), "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, not_an_echo_server_gets_a_hint)
{
	const char *args[] = {"-c", "1", "-s", "100", "-d", "0.3", NULL};
	struct server s;

	start_helper(&s, "--flip-at", "0");
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(
	        strstr(result.err, "(the first byte came back different: is this an echo server?)"),
	        "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* ---- issue 11: --expect none (discard) and --expect chargen ---------------- */

/* echo-helper with up to three option/value pairs (NULL ends them). */
static void start_service(struct server *s, const char *service, const char *opt, const char *value,
                          const char *listen)
{
	char *argv[10];
	int n = 0;

	argv[n++] = (char *)env_path("RBB_ECHO_HELPER");
	argv[n++] = (char *)"--service";
	argv[n++] = (char *)service;
	if (opt) {
		argv[n++] = (char *)opt;
		argv[n++] = (char *)value;
	}
	if (listen) {
		argv[n++] = (char *)"--listen";
		argv[n++] = (char *)listen;
	}
	argv[n] = NULL;
	start_server(s, argv);
}

/* The string after @key in @json (up to the next comma), or "". */
static const char *json_raw(const char *json, const char *key)
{
	static char val[64];
	char k[64];
	const char *at;
	size_t n;

	snprintf(k, sizeof(k), "\"%s\": ", key);
	at = strstr(json, k);
	if (!at)
		return "";
	at += strlen(k);
	n = strcspn(at, ",}\n");
	snprintf(val, sizeof(val), "%.*s", (int)(n < sizeof(val) ? n : sizeof(val) - 1), at);
	return val;
}

/*
 * A discard server: -n 100 of -s 1000 over 3 connections is exactly 100000
 * bytes acknowledged (and every connection closed cleanly after its FIN).
 */
Test(e2e, discard_exact_bytes_acknowledged)
{
	char pid[32];
	const char *args[] = {"--expect", "none", "-c",           "3", "-n",     "100",
	                      "-s",       "1000", "--server-pid", pid, "--json", NULL};
	struct server s;

	start_service(&s, "discard", NULL, NULL, NULL);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_str_eq(json_raw(result.out, "expect"), "\"none\"", "%s", result.out);
	cr_assert_eq(json_num(result.out, "bytes"), 100000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "verified_bytes"), 100000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "messages"), 0, "%s", result.out);
	cr_assert_eq(json_num(result.out, "connected"), 3, "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"server_cpu_s_per_gib\": "), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"ok\": true"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

/* A timed run reports MB/s, server and system CPU per GiB; unix sockets too. */
Test(e2e, discard_timed_with_cpu_tcp_and_unix)
{
	char dir[] = "/tmp/rbb-e2e-XXXXXX", url[128], pid[32];
	const char *args[] = {"--expect", "none",         "-c",           "2", "-d",
	                      "0.3",      "--cpu-system", "--server-pid", pid, NULL};
	const char *unix_args[] = {"--expect", "none", "-n", "7", "-s", "100K", "--json", NULL};
	struct server s;

	start_service(&s, "discard", NULL, NULL, NULL);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "MB/s acknowledged by the server's TCP"), "%s",
	                   result.out);
	cr_assert_not_null(strstr(result.out, "server cpu   "), "%s", result.out);
	cr_assert_not_null(strstr(result.out, " s per GiB (1 process)"), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "system cpu   "), "%s", result.out);
	cr_assert_not_null(strstr(result.out, "acknowledged (connections closed cleanly), all "
	                                      "correct"),
	                   "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);

	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "unix:%s/discard.sock", dir);
	start_service(&s, "discard", NULL, NULL, url);
	run_bench(&result, &s, unix_args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_eq(json_num(result.out, "verified_bytes"), 7 * 102400, "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
	rmdir(dir);
}

/* A discard server that stops reading: the window fills, acknowledgements stop. */
Test(e2e, discard_server_that_stops_reading_is_a_stall)
{
	const char *args[] = {"--expect",        "none", "-c", "1", "-d", "10",
	                      "--stall-timeout", "0.5",  NULL};
	struct server s;

	start_service(&s, "discard", "--stall-at", "100000", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: stall: nothing acknowledged for "),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* A discard server that closes with bytes unread (an RST, or a FIN before ours). */
Test(e2e, discard_server_that_closes_early_fails)
{
	const char *args[] = {"--expect", "none", "-c", "1", "-d", "10", NULL};
	struct server s;

	start_service(&s, "discard", "--close-at", "100000", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert(strstr(result.err, "(a server that closes with bytes unread resets the "
	                             "connection)") ||
	                  strstr(result.err, "before the client did"),
	          "%s", result.err);
	cr_assert_not_null(strstr(result.err, "rebound-bench: connection 0: "), "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* An echo server is not a discard server: the first byte back fails the run. */
Test(e2e, discard_expected_but_bytes_come_back)
{
	const char *args[] = {"--expect", "none", "-c", "1", "-d", "10", NULL};
	struct server s;

	start_helper(&s, NULL, NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "(a discard server sends nothing)"), "%s",
	                   result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* chargen: -n 100 of -s 1000 over 3 connections is exactly 100000 bytes, every one verified. */
Test(e2e, chargen_exact_bytes_verified)
{
	char pid[32];
	const char *args[] = {"--expect", "chargen", "-c",           "3", "-n",     "100",
	                      "-s",       "1000",    "--server-pid", pid, "--json", NULL};
	struct server s;

	start_service(&s, "chargen", NULL, NULL, NULL);
	snprintf(pid, sizeof(pid), "%d", (int)s.pid);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_str_eq(json_raw(result.out, "expect"), "\"chargen\"", "%s", result.out);
	cr_assert_eq(json_num(result.out, "bytes"), 100000, "%s", result.out);
	cr_assert_eq(json_num(result.out, "verified_bytes"), 100000, "%s", result.out);
	cr_assert_not_null(strstr(result.out, "\"server_cpu_s_per_gib\": "), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, chargen_timed_over_unix)
{
	char dir[] = "/tmp/rbb-e2e-XXXXXX", url[128];
	const char *args[] = {"--expect", "chargen", "-c", "2", "-d", "0.3", "--cpu-system", NULL};
	struct server s;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(url, sizeof(url), "unix:%s/chargen.sock", dir);
	start_service(&s, "chargen", NULL, NULL, url);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "MB/s of chargen pattern received"), "%s",
	                   result.out);
	cr_assert_not_null(strstr(result.out, "bytes of chargen pattern, all correct"), "%s",
	                   result.out);
	cr_assert_eq(stop_server(&s), 0);
	rmdir(dir);
}

/*
 * One corrupted byte at a known offset: 123457 is line 1668 (1668 * 74 =
 * 123432), column 25, ring position (1668 + 25) mod 95 = 78, so 'n' (0x6e);
 * the helper sends its complement, 0x91.
 */
Test(e2e, chargen_corrupt_byte_names_its_offset)
{
	const char *args[] = {"--expect", "chargen", "-c", "1", "-d", "10", NULL};
	struct server s;

	start_service(&s, "chargen", "--flip-at", "123457", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "rebound-bench: connection 0: chargen mismatch at "
	                                      "offset 123457 (line 1668, column 25): expected "
	                                      "0x6e, got 0x91\n"),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* A dropped byte shows where it went missing: the CR of line 67 arrives one early. */
Test(e2e, chargen_dropped_byte_names_its_offset)
{
	const char *args[] = {"--expect", "chargen", "-c", "2", "-d", "10", NULL};
	struct server s;

	/* 5030 = 67 * 74 + 72: the CR; the LF (0x0a) takes its place. */
	start_service(&s, "chargen", "--drop-at", "5030", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, ": chargen mismatch at offset 5030 (line 67, column "
	                                      "72): expected 0x0d, got 0x0a\n"),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, chargen_wrong_first_byte_gets_a_hint)
{
	const char *args[] = {"--expect", "chargen", "-c", "1", "-d", "10", NULL};
	struct server s;

	start_service(&s, "chargen", "--flip-at", "0", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "chargen mismatch at offset 0 (line 0, column 0): "
	                                      "expected 0x20, got 0xdf (a chargen stream starts "
	                                      "with ' ': is this a chargen server?)"),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, chargen_server_closing_is_a_short_stream)
{
	const char *args[] = {"--expect", "chargen", "-c", "1", "-d", "10", NULL};
	struct server s;

	start_service(&s, "chargen", "--close-at", "7777", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: server closed the chargen stream at "
	                                      "offset 7777 "),
	                   "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

Test(e2e, chargen_silence_is_a_stall)
{
	const char *args[] = {"--expect", "chargen",         "-c",  "1", "-d",
	                      "10",       "--stall-timeout", "0.5", NULL};
	struct server s;

	start_service(&s, "chargen", "--stall-at", "7777", NULL);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 1, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.err, "connection 0: stall: no chargen bytes for "), "%s",
	                   result.err);
	cr_assert_not_null(strstr(result.err, " at offset 7777\n"), "%s", result.err);
	cr_assert_eq(stop_server(&s), 0);
}

/* rebound's --service, once the engine has it; skipped with the reason until then. */
static void against_rebound_service(const char *service, const char *const *args)
{
	const char *rebound = getenv("REBOUND");
	char *help[] = {(char *)rebound, (char *)"--help", NULL};
	struct server s;
	struct outcome *h = &result;
	int out_fd, err_fd;
	size_t have = 0;
	bool open_ = true;

	if (!rebound || !*rebound)
		cr_skip_test("rebound is not built in this tree");
	s.pid = spawn(help, &out_fd, &err_fd);
	h->out[0] = '\0';
	while (open_)
		append(out_fd, h->out, &have, &open_);
	close(out_fd);
	close(err_fd);
	wait_status(s.pid);
	if (!strstr(h->out, "--service"))
		cr_skip_test("this rebound has no --service yet (issue 11, engine side)");
	char *argv[] = {(char *)rebound,     (char *)"--listen", (char *)"tcp://127.0.0.1:0",
	                (char *)"--service", (char *)service,    NULL};

	start_server(&s, argv);
	run_bench(&result, &s, args);
	cr_assert_eq(result.status, 0, "stdout:\n%s\nstderr:\n%s", result.out, result.err);
	cr_assert_not_null(strstr(result.out, "all correct"), "%s", result.out);
	cr_assert_eq(stop_server(&s), 0, "rebound did not exit 0 on SIGTERM");
}

Test(e2e, real_rebound_discard)
{
	const char *args[] = {"--expect", "none", "-c", "4", "-n", "64", "-s", "64K", NULL};

	against_rebound_service("discard", args);
	cr_assert_not_null(strstr(result.out, "verified     4194304 bytes acknowledged"), "%s",
	                   result.out);
}

Test(e2e, real_rebound_chargen)
{
	const char *args[] = {"--expect", "chargen", "-c", "4", "-n", "64", "-s", "64K", NULL};

	against_rebound_service("chargen", args);
	cr_assert_not_null(strstr(result.out, "verified     4194304 bytes of chargen pattern"),
	                   "%s", result.out);
}
