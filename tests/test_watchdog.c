/* SPDX-License-Identifier: MIT */
/*
 * The watchdog (issue 17): rb_server_heartbeat counts the workers that did
 * not come back to their event loop since the last round, so a stuck worker
 * is seen on every engine; the daemon sends WATCHDOG=1 over $NOTIFY_SOCKET
 * while $WATCHDOG_USEC asks for it.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* A log sink that blocks the worker logging "stats ..." until released. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool entered, released;
} gate = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false, false};

static void gate_sink(void *ctx, enum rb_log_level level, const char *msg)
{
	(void)ctx;
	(void)level;
	if (strncmp(msg, "stats ", 6) != 0)
		return;
	pthread_mutex_lock(&gate.mu);
	gate.entered = true;
	pthread_cond_broadcast(&gate.cv);
	while (!gate.released)
		pthread_cond_wait(&gate.cv, &gate.mu);
	pthread_mutex_unlock(&gate.mu);
}

static void two_workers_gated(struct rb_config *cfg)
{
	cfg->threads = 2;
	cfg->log_fn = gate_sink;
	cfg->log_level = RB_LOG_ERR;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Heartbeat rounds until one reports `want` late workers (bounded). Every
 * round must report at least `floor`. */
static void rounds_until(struct rb_server *srv, int want, int floor, const char *what)
{
	uint64_t deadline = now_ms() + 20000;
	int late;

	while ((late = rb_server_heartbeat(srv)) != want) {
		cr_assert_geq(late, floor, "%s: a round reported %d late", what, late);
		cr_assert_lt(now_ms(), deadline, "%s: no round with %d late (last %d)", what, want,
		             late);
		poll(NULL, 0, 1); /* give the workers a turn; re-checked, never assumed */
	}
}

static void stuck_worker_is_seen(struct engine_param *p)
{
	struct test_server ts;
	char name[64];

	th_engine_param_describe(p, name, sizeof(name));
	gate.entered = gate.released = false;
	th_server_start(&ts, p, two_workers_gated);
	cr_assert_eq(rb_server_heartbeat(ts.srv), 0, "%s: the first round", name);
	rounds_until(ts.srv, 0, 0, name);

	/* Worker 0 logs the stats line and stays in the sink: stuck. */
	rb_server_request_stats(ts.srv);
	pthread_mutex_lock(&gate.mu);
	while (!gate.entered)
		pthread_cond_wait(&gate.cv, &gate.mu);
	pthread_mutex_unlock(&gate.mu);
	rb_server_heartbeat(ts.srv); /* it may have answered this round before the sink */
	rounds_until(ts.srv, 1, 1, name);

	/* Released, it answers again. */
	pthread_mutex_lock(&gate.mu);
	gate.released = true;
	pthread_cond_broadcast(&gate.cv);
	pthread_mutex_unlock(&gate.mu);
	rounds_until(ts.srv, 0, 0, name);
	th_server_stop(&ts);
}

Test(watchdog, heartbeat_sees_a_stuck_worker_on_every_engine, .timeout = 120)
{
	struct engine_param params[] = {
	        {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_WRITEV},
	        {RB_ENGINE_EPOLL, RB_TRIGGER_LEVEL, RB_COPY_WRITEV},
	        {RB_ENGINE_POLL, RB_TRIGGER_EDGE, RB_COPY_WRITEV},
	        {RB_ENGINE_SELECT, RB_TRIGGER_EDGE, RB_COPY_WRITEV},
	        {RB_ENGINE_URING, RB_TRIGGER_EDGE, RB_COPY_WRITEV},
	};
	char why[128];

	for (size_t i = 0; i < sizeof(params) / sizeof(params[0]); i++) {
		if (rb_engine_available(params[i].engine, why, sizeof(why)) < 0) {
			cr_log_warn("%s not available here: %s", rb_engine_name(params[i].engine),
			            why);
			continue;
		}
		stuck_worker_is_seen(&params[i]);
	}
}

/* ---- the daemon ---- */

static int notify_socket(char *env, size_t len)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	char name[64];
	int fd;

	snprintf(name, sizeof(name), "rebound-watchdog-%d", (int)getpid());
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	memcpy(sun.sun_path + 1, name, strlen(name));
	cr_assert_eq(bind(fd, (struct sockaddr *)&sun,
	                  (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + strlen(name))),
	             0);
	snprintf(env, len, "NOTIFY_SOCKET=@%s", name);
	return fd;
}

/* Next datagram on fd, bounded by the test's timeout. */
static void next_msg(int fd, char *buf, size_t len)
{
	ssize_t r = recv(fd, buf, len - 1, 0);

	cr_assert_gt(r, 0);
	buf[r] = '\0';
}

static pid_t spawn_rebound(const char *const *env_extra, int *err_fd)
{
	const char *bin = getenv("REBOUND_BIN");
	const char *argv[] = {bin,        "--engine",          "epoll", "--threads", "2",
	                      "--listen", "tcp://127.0.0.1:0", NULL};
	posix_spawn_file_actions_t fa;
	int e[2];
	pid_t pid;

	cr_assert_not_null(bin, "REBOUND_BIN is not set (run through meson test)");
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, e[1], 2);
	cr_assert_eq(
	        posix_spawn(&pid, bin, &fa, NULL, (char *const *)argv, th_child_env(env_extra)), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(e[1]);
	*err_fd = e[0];
	return pid;
}

Test(watchdog, daemon_feeds_the_watchdog, .timeout = 60)
{
	char env_notify[96], msg[256], err[4096];
	int nfd = notify_socket(env_notify, sizeof(env_notify)), efd, st, pings = 0;
	pid_t pid =
	        spawn_rebound((const char *const[]){env_notify, "WATCHDOG_USEC=40000", NULL}, &efd);

	next_msg(nfd, msg, sizeof(msg));
	cr_assert_str_eq(msg, "READY=1\nSTATUS=echoing with the epoll engine");
	for (int i = 0; i < 3; i++) {
		next_msg(nfd, msg, sizeof(msg));
		cr_assert_str_eq(msg, "WATCHDOG=1");
	}
	cr_assert_eq(kill(pid, SIGTERM), 0);
	/* Pings may still cross the stop; then STOPPING=1, and nothing else. */
	for (;;) {
		next_msg(nfd, msg, sizeof(msg));
		if (strcmp(msg, "WATCHDOG=1") != 0)
			break;
		cr_assert_lt(++pings, 1000);
	}
	cr_assert_str_eq(msg, "STOPPING=1");
	th_slurp(efd, err, sizeof(err));
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d; stderr: %s", st, err);
	close(nfd);
}

Test(watchdog, daemon_warns_about_a_bad_watchdog_usec, .timeout = 60)
{
	char env_notify[96], msg[256], err[4096];
	int nfd = notify_socket(env_notify, sizeof(env_notify)), efd, st;
	pid_t pid =
	        spawn_rebound((const char *const[]){env_notify, "WATCHDOG_USEC=soon", NULL}, &efd);

	next_msg(nfd, msg, sizeof(msg));
	cr_assert_str_eq(msg, "READY=1\nSTATUS=echoing with the epoll engine");
	cr_assert_eq(kill(pid, SIGTERM), 0);
	next_msg(nfd, msg, sizeof(msg));
	cr_assert_str_eq(msg, "STOPPING=1", "no pings without a valid period");
	th_slurp(efd, err, sizeof(err));
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d; stderr: %s", st, err);
	cr_assert(strstr(err, "rebound: ignoring an invalid WATCHDOG_USEC\n") != NULL, "%s", err);
}
