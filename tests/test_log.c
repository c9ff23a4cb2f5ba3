/* SPDX-License-Identifier: MIT */
/*
 * Logging (issue 17): a server's messages reach its own rb_config sink at
 * their levels, filtered by log_level; without a sink the daemon's stderr
 * lines are "rebound: MSG", "<N>MSG" when stderr is the journal
 * ($JOURNAL_STREAM = stderr's dev:ino), and start with an ISO 8601 UTC time
 * under --log-timestamps.
 */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* ---- a sink that records what it is given ---- */

#define SINK_MAX 64

struct sink {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned n;
	enum rb_log_level level[SINK_MAX];
	char msg[SINK_MAX][2048];
};

static void sink_init(struct sink *s)
{
	memset(s, 0, sizeof(*s));
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->cv, NULL);
}

static void sink_fn(void *ctx, enum rb_log_level level, const char *msg)
{
	struct sink *s = ctx;

	pthread_mutex_lock(&s->mu);
	if (s->n < SINK_MAX) {
		s->level[s->n] = level;
		snprintf(s->msg[s->n], sizeof(s->msg[0]), "%s", msg);
		s->n++;
	}
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* Wait (bounded) until the sink holds a message starting with prefix; its index. */
static unsigned sink_wait(struct sink *s, const char *prefix)
{
	struct timespec deadline;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 20;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		for (unsigned i = 0; i < s->n; i++)
			if (strncmp(s->msg[i], prefix, strlen(prefix)) == 0) {
				pthread_mutex_unlock(&s->mu);
				return i;
			}
		if (pthread_cond_timedwait(&s->cv, &s->mu, &deadline) != 0) {
			pthread_mutex_unlock(&s->mu);
			cr_assert_fail("no log message starting with '%s' (have %u)", prefix, s->n);
		}
	}
}

static unsigned sink_count(struct sink *s, const char *prefix)
{
	unsigned k = 0;

	pthread_mutex_lock(&s->mu);
	for (unsigned i = 0; i < s->n; i++)
		k += strncmp(s->msg[i], prefix, strlen(prefix)) == 0;
	pthread_mutex_unlock(&s->mu);
	return k;
}

static struct sink *g_sink;
static enum rb_log_level g_level;
static bool g_json;

static void to_sink(struct rb_config *cfg)
{
	cfg->log_fn = sink_fn;
	cfg->log_ctx = g_sink;
	cfg->log_level = g_level;
	cfg->log_json = g_json;
	cfg->copy = RB_COPY_SPLICE;
	cfg->pipe_size = 1u << 30; /* above fs.pipe-max-size: an INFO message */
}

static int pipe_max_size(void)
{
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "r");
	int v = -1;

	cr_assert_not_null(f);
	cr_assert_eq(fscanf(f, "%d", &v), 1);
	fclose(f);
	cr_assert_lt(v, 1 << 30, "fs.pipe-max-size is %d: no pipe-size message to test", v);
	return v;
}

Test(log, sink_gets_messages_at_their_levels)
{
	struct engine_param p = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE};
	struct test_server ts;
	struct sink s;
	char want[128];
	unsigned i;

	sink_init(&s);
	g_sink = &s;
	g_level = RB_LOG_INFO;
	th_server_start(&ts, &p, to_sink);
	/* Logged by rb_server_create, in this thread. */
	snprintf(want, sizeof(want),
	         "pipe size 1073741824 is above fs.pipe-max-size; using %d bytes", pipe_max_size());
	cr_assert_eq(s.n, 1);
	cr_assert_str_eq(s.msg[0], want);
	cr_assert_eq(s.level[0], RB_LOG_INFO);
	/* Logged by a worker, in the server's thread. */
	rb_server_request_stats(ts.srv);
	i = sink_wait(&s, "stats {");
	cr_assert_eq(s.level[i], RB_LOG_NOTICE);
	cr_assert_eq(s.msg[i][strlen(s.msg[i]) - 1], '}', "no newline, nothing after the JSON");
	th_server_stop(&ts);
}

Test(log, level_filters_what_reaches_the_sink)
{
	struct engine_param p = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE};
	struct test_server ts;
	struct sink s;

	sink_init(&s);
	g_sink = &s;
	g_level = RB_LOG_ERR;
	th_server_start(&ts, &p, to_sink);
	cr_assert_eq(s.n, 0, "an INFO message passed log_level ERR: %s", s.msg[0]);
	rb_server_request_stats(ts.srv);
	sink_wait(&s, "stats {");
	th_server_stop(&ts);
	cr_assert_eq(s.n, 1);

	/* rb_log applies the same rule, synchronously, at every level. */
	struct rb_config cfg;
	rb_config_init(&cfg);
	cr_assert_eq(cfg.log_level, RB_LOG_INFO);
	cfg.log_fn = sink_fn;
	cfg.log_ctx = &s;
	for (int max = RB_LOG_ERR - 1; max <= RB_LOG_DEBUG; max++) {
		cfg.log_level = (enum rb_log_level)max;
		for (int l = RB_LOG_ERR; l <= RB_LOG_DEBUG; l++) {
			unsigned before = s.n;
			rb_log(&cfg, (enum rb_log_level)l, "level %d under %d", l, max);
			cr_assert_eq(s.n - before, l <= max ? 1u : 0u, "level %d, log_level %d", l,
			             max);
		}
	}
}

Test(log, rb_log_formats_and_truncates)
{
	struct rb_config cfg;
	struct sink s;
	char big[3000];

	sink_init(&s);
	rb_config_init(&cfg);
	cfg.log_fn = sink_fn;
	cfg.log_ctx = &s;
	rb_log(&cfg, RB_LOG_WARNING, "x=%d %s", 42, "y");
	cr_assert_eq(s.n, 1);
	cr_assert_eq(s.level[0], RB_LOG_WARNING);
	cr_assert_str_eq(s.msg[0], "x=42 y");
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	rb_log(&cfg, RB_LOG_ERR, "%s", big);
	cr_assert_eq(strlen(s.msg[1]), 2047, "messages are cut at 2047 bytes");
}

/* SIGUSR1's stats: a report asked for, at NOTICE whatever the level; with
 * JSON logs, an object of its own, not JSON inside a "msg" string. */
Test(log, stats_report_is_an_event_at_notice)
{
	struct engine_param p = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE};
	struct test_server ts;
	struct sink s;
	unsigned i;

	sink_init(&s);
	g_sink = &s;
	g_level = RB_LOG_ERR;
	g_json = true;
	th_server_start(&ts, &p, to_sink);
	rb_server_request_stats(ts.srv);
	i = sink_wait(&s, "{\"event\":\"stats\",\"stats\":{\"accepted\":0,");
	th_server_stop(&ts);
	cr_assert_eq(s.n, 1, "only the report passed log_level ERR");
	cr_assert_eq(s.level[i], RB_LOG_NOTICE);
	const char *end = ",\"accepted_per_worker\":[0]}}";
	size_t len = strlen(s.msg[i]);
	cr_assert(len > strlen(end) && strcmp(s.msg[i] + len - strlen(end), end) == 0,
	          "one object, the counters' object closed: %s", s.msg[i]);
}

/* Two servers in one process: each one's workers log to its own sink. */
Test(log, each_server_logs_to_its_own_sink)
{
	struct engine_param p = {RB_ENGINE_EPOLL, RB_TRIGGER_EDGE, RB_COPY_SPLICE};
	struct test_server a, b;
	struct sink sa, sb;

	sink_init(&sa);
	sink_init(&sb);
	g_level = RB_LOG_ERR;
	g_sink = &sa;
	th_server_start(&a, &p, to_sink);
	g_sink = &sb;
	th_server_start(&b, &p, to_sink);
	rb_server_request_stats(a.srv);
	sink_wait(&sa, "stats {");
	rb_server_request_stats(b.srv);
	sink_wait(&sb, "stats {");
	th_server_stop(&a);
	th_server_stop(&b);
	cr_assert_eq(sink_count(&sa, "stats {"), 1);
	cr_assert_eq(sink_count(&sb, "stats {"), 1);
	cr_assert_eq(sa.n, 1);
	cr_assert_eq(sb.n, 1);
}

/* ---- the daemon's stderr logger ---- */

static const char *rebound_bin(void)
{
	const char *b = getenv("REBOUND_BIN");

	cr_assert_not_null(b, "REBOUND_BIN is not set (run through meson test)");
	return b;
}

/* "JOURNAL_STREAM=DEV:INO" for what fd is open on. */
static void journal_stream_of(int fd, char *buf, size_t len)
{
	struct stat st;

	cr_assert_eq(fstat(fd, &st), 0);
	snprintf(buf, len, "JOURNAL_STREAM=%llu:%llu", (unsigned long long)st.st_dev,
	         (unsigned long long)st.st_ino);
}

/*
 * Run rebound with args; its stderr is a pipe. journal: 1 sets JOURNAL_STREAM
 * to that pipe, 0 to another file (/dev/null). If running, it is stopped
 * with SIGTERM once it has logged lines_before_stop lines. Returns the exit
 * status; err gets all of stderr.
 */
static int run_logged(const char *const *args, int journal, int lines_before_stop, char *err,
                      size_t len)
{
	const char *argv[16];
	char js[96], **env = th_child_env(NULL), *envp[260];
	posix_spawn_file_actions_t fa;
	size_t n = 0, got = 0;
	int e[2], st, lines = 0;
	pid_t pid;

	argv[n++] = rebound_bin();
	while (*args)
		argv[n++] = *args++;
	argv[n] = NULL;
	cr_assert_eq(pipe2(e, O_CLOEXEC), 0);
	if (journal) {
		journal_stream_of(e[1], js, sizeof(js));
	} else {
		int null = open("/dev/null", O_RDONLY | O_CLOEXEC);
		journal_stream_of(null, js, sizeof(js));
		close(null);
	}
	n = 0;
	for (char **p = env; *p && n < 256; p++)
		if (strncmp(*p, "JOURNAL_STREAM=", 15) != 0)
			envp[n++] = *p;
	envp[n++] = js;
	envp[n] = NULL;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, e[1], 2);
	cr_assert_eq(posix_spawn(&pid, argv[0], &fa, NULL, (char *const *)argv, envp), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(e[1]);
	for (;;) {
		ssize_t r = read(e[0], err + got, len - 1 - got);
		if (r <= 0)
			break;
		for (ssize_t i = 0; i < r; i++)
			if (err[got + (size_t)i] == '\n' && ++lines == lines_before_stop)
				kill(pid, SIGTERM);
		got += (size_t)r;
	}
	err[got] = '\0';
	close(e[0]);
	cr_assert_eq(waitpid(pid, &st, 0), pid);
	cr_assert(WIFEXITED(st), "rebound died of signal %d; stderr: %s", WTERMSIG(st), err);
	return WEXITSTATUS(st);
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static void listen_url(char *buf, size_t len)
{
	static int k;

	snprintf(buf, len, "unix:@rebound-log-test-%d-%d", (int)getpid(), k++);
}

static void expected_lines(char *buf, size_t len, const char *prefix, const char *url)
{
	snprintf(buf, len,
	         "%slistening on %s\n"
	         "%sengine epoll (edge), copy writev, 1 thread, chunk 16384, conn-buffer 1048576\n"
	         "%sstopped: 0 connections, 0 bytes in, 0 bytes out, engine epoll\n",
	         prefix, url, prefix, prefix);
}

Test(log, stderr_plain_when_not_the_journal, .timeout = 60)
{
	char url[96], err[2048], want[1024];

	listen_url(url, sizeof(url));
	cr_assert_eq(run_logged(ARGS("--engine", "epoll", "--listen", url), 0, 2, err, sizeof(err)),
	             0, "%s", err);
	expected_lines(want, sizeof(want), "rebound: ", url);
	cr_assert_str_eq(err, want);
}

Test(log, stderr_priority_prefixes_in_the_journal, .timeout = 60)
{
	char url[96], err[2048], want[1024];

	listen_url(url, sizeof(url));
	cr_assert_eq(run_logged(ARGS("--engine", "epoll", "--listen", url), 1, 2, err, sizeof(err)),
	             0, "%s", err);
	expected_lines(want, sizeof(want), "<6>", url);
	cr_assert_str_eq(err, want);
	/* The journal stamps lines itself: --log-timestamps adds nothing there. */
	listen_url(url, sizeof(url));
	cr_assert_eq(run_logged(ARGS("--engine", "epoll", "--log-timestamps", "--listen", url), 1,
	                        2, err, sizeof(err)),
	             0, "%s", err);
	expected_lines(want, sizeof(want), "<6>", url);
	cr_assert_str_eq(err, want);
}

Test(log, stderr_errors_get_priority_3_in_the_journal, .timeout = 60)
{
	const char *url = "unix:/nonexistent-rebound-dir/sock";
	char plain[1024], journal[1024], want[1100];

	cr_assert_eq(run_logged(ARGS("--listen", url), 0, 0, plain, sizeof(plain)), 1);
	cr_assert_eq(run_logged(ARGS("--listen", url), 1, 0, journal, sizeof(journal)), 1);
	cr_assert(strncmp(plain, "rebound: ", 9) == 0, "%s", plain);
	cr_assert(strchr(plain, '\n') == plain + strlen(plain) - 1, "one line: %s", plain);
	snprintf(want, sizeof(want), "<3>%s", plain + 9);
	cr_assert_str_eq(journal, want);
}

Test(log, stderr_iso_timestamps, .timeout = 60)
{
	char url[96], err[2048], want[1024], stripped[2048] = "", *line, *save;
	regex_t re;
	regmatch_t m[2];
	time_t before = time(NULL), after;

	listen_url(url, sizeof(url));
	cr_assert_eq(run_logged(ARGS("--engine", "epoll", "--log-timestamps", "--listen", url), 0,
	                        2, err, sizeof(err)),
	             0, "%s", err);
	after = time(NULL);
	cr_assert_eq(regcomp(&re,
	                     "^([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2})\\.[0-9]{3}Z "
	                     "rebound: ",
	                     REG_EXTENDED),
	             0);
	for (line = strtok_r(err, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		struct tm tm = {0};
		cr_assert_eq(regexec(&re, line, 2, m, 0), 0, "no timestamp: '%s'", line);
		cr_assert_not_null(strptime(line, "%Y-%m-%dT%H:%M:%S", &tm));
		time_t t = timegm(&tm);
		cr_assert(t >= before - 1 && t <= after, "time %lld not within [%lld, %lld]",
		          (long long)t, (long long)before, (long long)after);
		strcat(stripped, line + m[0].rm_eo - strlen("rebound: "));
		strcat(stripped, "\n");
	}
	regfree(&re);
	expected_lines(want, sizeof(want), "rebound: ", url);
	cr_assert_str_eq(stripped, want);
}

Test(log, log_timestamps_takes_no_value)
{
	char err[512];

	cr_assert_eq(run_logged(ARGS("--log-timestamps=yes"), 0, 0, err, sizeof(err)), 2);
	cr_assert_str_eq(err, "rebound: unknown option '--log-timestamps=yes' (see --help)\n");
}
