/* SPDX-License-Identifier: MIT */
/*
 * Logging: a server's messages go to its rb_config's sink, or to stderr as
 * one line each, in the journal's "<N>" priority form when stderr is the
 * journal (sd-daemon(3)), else with a "rebound: " prefix and optional
 * ISO 8601 timestamps.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

/* Longest message, the NUL included. */
#define RB_LOG_MAX 2048
/* A whole line: an event (a stats line with every counter) may be longer
 * than a message. */
#define RB_LINE_MAX 8192

/* What a thread outside any server (or an unbound one) logs with. */
static const struct rb_config log_defaults = {.log_level = RB_LOG_INFO};
/* The settings of the server this thread is creating or running. */
static _Thread_local const struct rb_config *log_bound;

void rb__log_bind(const struct rb_config *cfg)
{
	log_bound = cfg;
}

void rb__log_unbind(const struct rb_config *cfg)
{
	if (log_bound == cfg)
		log_bound = NULL;
}

/* systemd sets JOURNAL_STREAM=DEV:INO for the stream it connects to stderr;
 * it is inherited, so it counts only if stderr is still that stream. */
static bool stderr_is_journal(void)
{
	const char *js = getenv("JOURNAL_STREAM");
	unsigned long long dev, ino;
	struct stat st;
	int end = 0;

	if (!js || sscanf(js, "%llu:%llu%n", &dev, &ino, &end) != 2 || js[end] != '\0')
		return false;
	return fstat(STDERR_FILENO, &st) == 0 && (unsigned long long)st.st_dev == dev &&
	       (unsigned long long)st.st_ino == ino;
}

static const char *level_name(enum rb_log_level level)
{
	switch (level) {
	case RB_LOG_ERR:
		return "err";
	case RB_LOG_WARNING:
		return "warning";
	case RB_LOG_NOTICE:
		return "notice";
	case RB_LOG_INFO:
		return "info";
	case RB_LOG_DEBUG:
		break;
	}
	return "debug";
}

size_t rb__json_escape(char *out, size_t len, const char *s)
{
	size_t o = 0;

	for (; *s && o + 7 < len; s++) {
		unsigned char c = (unsigned char)*s;
		if (c == '"' || c == '\\') {
			out[o++] = '\\';
			out[o++] = (char)c;
		} else if (c < 0x20) {
			o += (size_t)snprintf(out + o, len - o, "\\u%04x", c);
		} else {
			out[o++] = (char)c;
		}
	}
	if (len)
		out[o < len ? o : len - 1] = '\0';
	return o;
}

/*
 * One line: text ("rebound: MSG"), or with --log-format json one object,
 * {"ts":...,"level":...,"msg":MSG} or, for an event, its own fields.
 */
static void log_stderr(enum rb_log_level level, bool timestamps, bool json, const char *msg,
                       const char *fields)
{
	char line[RB_LINE_MAX + 128], stamp[40] = "";
	size_t off = 0;
	int n;

	if (json) {
		char esc[2 * RB_LOG_MAX];
		struct timespec ts;
		struct tm tm;
		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		size_t k = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		snprintf(stamp + k, sizeof(stamp) - k, ".%03ldZ", ts.tv_nsec / 1000000L);
		if (!fields) {
			rb__json_escape(esc, sizeof(esc), msg);
			n = snprintf(line, sizeof(line),
			             "{\"ts\":\"%s\",\"level\":\"%s\",\"msg\":\"%s\"}\n", stamp,
			             level_name(level), esc);
		} else {
			n = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\",%s}\n",
			             stamp, level_name(level), fields);
		}
	} else if (stderr_is_journal()) {
		/* The journal stamps and tags lines itself. */
		n = snprintf(line, sizeof(line), "<%d>%s\n", (int)level, msg);
	} else {
		if (timestamps) {
			struct timespec ts;
			struct tm tm;
			clock_gettime(CLOCK_REALTIME, &ts);
			gmtime_r(&ts.tv_sec, &tm);
			size_t k = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
			snprintf(stamp + k, sizeof(stamp) - k, ".%03ldZ ", ts.tv_nsec / 1000000L);
		}
		n = snprintf(line, sizeof(line), "%srebound: %s\n", stamp, msg);
	}
	if (n < 0)
		return;
	if ((size_t)n >= sizeof(line)) { /* truncated: keep the newline */
		n = (int)sizeof(line) - 1;
		line[n - 1] = '\n';
	}
	/* One write per line, so lines from several workers never interleave. */
	while (off < (size_t)n) {
		ssize_t w = write(STDERR_FILENO, line + off, (size_t)n - off);
		if (w <= 0)
			return;
		off += (size_t)w;
	}
}

__attribute__((format(printf, 3, 0))) static void
vlog(const struct rb_config *cfg, enum rb_log_level level, const char *fmt, va_list ap)
{
	char msg[RB_LOG_MAX];

	if (level > cfg->log_level)
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (cfg->log_fn)
		cfg->log_fn(cfg->log_ctx, level, msg);
	else
		log_stderr(level, cfg->log_timestamps, cfg->log_json, msg, NULL);
}

/* An event at `level`; `force`: whatever the configured level (a report
 * someone asked for). */
static void log_event(enum rb_log_level level, bool force, const char *text, const char *fields)
{
	const struct rb_config *cfg = log_bound ? log_bound : &log_defaults;

	if (level > cfg->log_level && !force)
		return;
	if (cfg->log_fn) {
		/* A sink gets the form its server asked for. */
		if (cfg->log_json) {
			char obj[RB_LINE_MAX];
			snprintf(obj, sizeof(obj), "{%s}", fields);
			cfg->log_fn(cfg->log_ctx, level, obj);
		} else {
			cfg->log_fn(cfg->log_ctx, level, text);
		}
		return;
	}
	log_stderr(level, cfg->log_timestamps, cfg->log_json, text, cfg->log_json ? fields : NULL);
}

void rb__log_event(enum rb_log_level level, const char *text, const char *fields)
{
	log_event(level, false, text, fields);
}

void rb__log_report(const char *text, const char *fields)
{
	log_event(RB_LOG_NOTICE, true, text, fields);
}

void rb_log(const struct rb_config *cfg, enum rb_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(cfg ? cfg : &log_defaults, level, fmt, ap);
	va_end(ap);
}

void rb__log(enum rb_log_level level, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vlog(log_bound ? log_bound : &log_defaults, level, fmt, ap);
	va_end(ap);
}

uint64_t rb__now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

bool rb__ratelimit_ok(struct rb_ratelimit *rl, unsigned *suppressed)
{
	time_t now = (time_t)(rb__now_us() / 1000000u);

	if (rl->last && now == rl->last) {
		rl->suppressed++;
		return false;
	}
	rl->last = now;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return true;
}
