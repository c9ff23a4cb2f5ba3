/* SPDX-License-Identifier: MIT */
/* The rebound command line: flags in, one server run, a summary out. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "rebound/rebound.h"
#include "rb_config.h"
#include "daemon.h"
#include "sd.h"

/* Exit statuses, documented in --help and the man page. */
enum {
	EXIT_RUNTIME = 1,     /* could not listen, or failed while running */
	EXIT_USAGE = 2,       /* bad flag or value */
	EXIT_UNAVAILABLE = 3, /* the engine asked for cannot run here */
};

static struct rb_server *g_srv;
static volatile sig_atomic_t g_signals;

static void on_stats_signal(int sig)
{
	(void)sig;
	if (g_srv)
		rb_server_request_stats(g_srv);
}

static void on_signal(int sig)
{
	if (g_signals++ > 0) {
		rb_pidfile_remove();
		_exit(128 + sig); /* second signal: leave at once */
	}
	rb_sd_notify("STOPPING=1");
	if (g_srv)
		rb_server_stop(g_srv);
}

static void usage(FILE *f)
{
	fprintf(f,
	        "usage: rebound [OPTIONS]\n"
	        "Echo every byte back to TCP, UDP and UNIX-socket peers.\n"
	        "\n"
	        "  -l, --listen URL         tcp://HOST:PORT, tcp://[IPV6]:PORT, udp://HOST:PORT,\n"
	        "                           unix:PATH or fd:N (an open socket); systemd's\n"
	        "                           socket activation adds its sockets\n"
	        "                           (repeatable; default tcp://127.0.0.1:7007)\n"
	        "  -e, --engine NAME        epoll, poll, select, uring, sockmap or auto (default\n"
	        "                           auto);\n"
	        "                           select refuses connections whose descriptor is\n"
	        "                           1024 (FD_SETSIZE) or more\n"
	        "      --trigger MODE       edge or level, for the epoll engine (default edge)\n"
	        "      --copy MODE          writev (default) or splice\n"
	        "      --pipe-size SIZE     splice pipe size, capped by fs.pipe-max-size (default "
	        "1m)\n"
	        "  -t, --threads N          worker threads, 1 to %d (default 1)\n"
	        "      --chunk-size SIZE    buffer chunk size, 512 to 16m (default 16k)\n"
	        "      --conn-buffer SIZE   per-connection buffer cap (default 1m)\n"
	        "      --max-memory SIZE    cap on all buffered bytes, 0 = none (default 512m)\n"
	        "      --shutdown-timeout MS  flush deadline on SIGINT/SIGTERM (default 2000)\n"
	        "      --keepalive IDLE[,INTVL,CNT]  TCP keepalive in seconds, or off\n"
	        "                           (default 120,30,4)\n"
	        "      --user-timeout MS    TCP_USER_TIMEOUT: end a connection whose data stays\n"
	        "                           unacknowledged this long, 0 = kernel default\n"
	        "                           (default 240000)\n"
	        "      --unix-mode MODE     octal mode of unix:PATH socket files (default 0660)\n"
	        "      --udp-rate N         UDP datagrams answered per second per source\n"
	        "                           address, 0 = no limit (default 10000)\n"
	        "      --udp-allow-low-ports  answer UDP sources below port 1024 (default: never)\n"
	        "      --service NAME       echo (RFC 862), discard (RFC 863), chargen (RFC 864)\n"
	        "                           or sockperf (answers sockperf's pong requests)\n"
	        "                           (default echo)\n"
	        "      --forward URL        relay: each peer gets its own connection to URL\n"
	        "                           (tcp://HOST:PORT, tcp://[IPV6]:PORT, unix:PATH), and\n"
	        "                           bytes flow both ways; not with UDP listeners\n"
	        "      --connect-timeout MS relay: upstream connect deadline, 1 to 3600000\n"
	        "                           (default 5000)\n"
	        "      --max-conns N        at most N open sessions; more peers are reset at\n"
	        "                           once and counted (default 0: no limit)\n"
	        "      --idle-timeout MS    close a session idle this long (default 0: never)\n"
	        "      --write-timeout MS   reset a session whose output made no progress\n"
	        "                           this long (default 0: never)\n"
	        "      --log-connections    a line at every session's open and close\n"
	        "      --log-format FORMAT  text or json (one object per line; default text)\n"
	        "      --stats-interval MS  a stats line this often, with rates (default 0: off)\n"
	        "      --reuseport          TCP: one listening socket per worker\n"
	        "      --cpus LIST          worker i runs on the i-th CPU of LIST (e.g. 0,2-3)\n"
	        "      --busy-poll USEC     busy-poll sockets (epoll, uring NAPI: 6.9+) this long\n"
	        "      --uring-entries N    uring: submission queue entries per ring, 1 to 32768\n"
	        "                           (default 1024)\n"
	        "      --uring-buffers N    uring: receive buffers per worker, a power of two up\n"
	        "                           to 32768, each --chunk-size bytes, allocated as\n"
	        "                           needed (default 4096)\n"
	        "      --uring-sqpoll MS    uring: a kernel thread submits, idle after MS\n"
	        "                           (default 0: off)\n"
	        "      --uring-off LIST     uring: features not to use, comma-separated: bundle,\n"
	        "                           inc, batch (default: use all the kernel has)\n"
	        "      --uring-batch-us N   uring: one enter per wake-up, with a min-wait window\n"
	        "                           of N us, up to 60000000 (default 0: off)\n"
	        "      --uring-send-zc SIZE uring: zero-copy sends (IORING_OP_SEND_ZC) of at\n"
	        "                           least SIZE bytes, e.g. 16k (default off; 0 or off)\n"
	        "      --metrics URL        serve GET /metrics (Prometheus text format) and GET\n"
	        "                           /stats (JSON) over HTTP on tcp://HOST:PORT or\n"
	        "                           unix:PATH, from a thread of its own; GET /impair\n"
	        "                           tells the impairments, POST /impair (the flags as\n"
	        "                           the body) replaces them for new sessions\n"
	        "      --pidfile PATH       write the PID to PATH once listening, remove it at\n"
	        "                           exit; refuse to start if it names a running process\n"
	        "      --daemon             run in the background (double fork, setsid, stdio to\n"
	        "                           /dev/null); exit 0 once the daemon is listening, or\n"
	        "                           with its start-up error and status\n"
	        "      --logfile PATH       append stdout and stderr to PATH (with --daemon:\n"
	        "                           instead of /dev/null)\n"
	        "Impairments (docs/impairments.md; epoll, poll and select engines). Each\n"
	        "applies to both directions, or with --up-/--down- to one way of a relay,\n"
	        "and takes @P: the share of sessions it applies to (default 1):\n"
	        "      --delay D[~J]        release every byte D ms after it came (jitter up to\n"
	        "                           J, never reordered); UDP: delay answers (reordered)\n"
	        "      --rate R             a token bucket, bits/s with k, m or g (10m)\n"
	        "      --slice SIZE[/D]     write at most SIZE bytes at a time, D ms apart\n"
	        "      --reset-after N      after N bytes: RST\n"
	        "      --close-after N      after N bytes: FIN, the rest dropped\n"
	        "      --stall-after N      after N bytes: read and write nothing more\n"
	        "      --accept-delay D     serve a new session only D ms after accepting it\n"
	        "      --refuse P           reset a share P of new sessions at once\n"
	        "      --loss P, --duplicate P  UDP: drop, or send twice, a share P of answers\n"
	        "      --corrupt P          UDP: flip one bit in a share P of answers (opt-in:\n"
	        "                           the only impairment that changes bytes)\n"
	        "      --seed S             seed every random choice (default: picked and\n"
	        "                           printed at start, so a run can be replayed)\n"
	        "      --impair-file FILE   the impairments as flags in FILE (not with the flags\n"
	        "                           themselves), read again on SIGHUP for new sessions\n"
	        "D is in ms (10, 10ms or 2s); P is 0.1 or 10%%.\n"
	        "\n"
	        "      --list-engines       print the engines that can run here and exit\n"
	        "  -v, --verbose            more logging\n"
	        "  -q, --quiet              errors only\n"
	        "      --log-timestamps     start log lines with an ISO 8601 UTC time (not\n"
	        "                           when stderr is the journal: it has its own)\n"
	        "  -h, --help               this help\n"
	        "  -V, --version            print the version\n"
	        "\n"
	        "SIZE takes a suffix k, m or g (binary). SIGINT/SIGTERM stop gracefully (a\n"
	        "second one exits at once); SIGUSR1 logs a stats line. Under systemd it reports\n"
	        "READY=1 and STOPPING=1 over $NOTIFY_SOCKET, WATCHDOG=1 while every worker\n"
	        "is alive if $WATCHDOG_USEC asks, and logs with <N> priority prefixes when\n"
	        "stderr is the journal. Exit status: 0 after a clean stop,\n"
	        "1 if it cannot listen or fails while running, 2 for a bad flag or value,\n"
	        "3 if the engine asked for cannot run here.\n",
	        RB_MAX_THREADS);
}

static int bad_value(const char *flag, const char *value, const char *why)
{
	fprintf(stderr, "rebound: invalid %s '%s': %s\n", flag, value, why);
	return EXIT_USAGE;
}

/* A start-up error after the flags: logged, and told to the shell that
 * started a --daemon (its stderr is the log file or /dev/null by now). */
static int startup_failed(const struct rb_config *cfg, int status, const char *msg)
{
	rb_log(cfg, RB_LOG_ERR, "%s", msg);
	rb_daemon_ready(status, msg);
	return status;
}

/*
 * The CLI only parses: a value that is not a size or a number is refused
 * here; whether a value is within its limits is the library's to say
 * (rb_config_check, called by rb_server_create), with the flag's name.
 */
static int parse_size_flag(const char *flag, const char *value, size_t *out)
{
	int rc = rb_parse_size(value, out);

	if (rc == -ERANGE)
		return bad_value(flag, value, "too large");
	if (rc < 0)
		return bad_value(flag, value, "expected a size such as 4096, 16k or 1m");
	return 0;
}

static int parse_uint_flag(const char *flag, const char *value, unsigned *out)
{
	unsigned long long v;
	char *end;

	errno = 0;
	if (!*value || strspn(value, "0123456789") != strlen(value))
		return bad_value(flag, value, "expected a whole number");
	v = strtoull(value, &end, 10);
	if (errno || v > UINT_MAX)
		return bad_value(flag, value, "too large");
	*out = (unsigned)v;
	return 0;
}

/* --keepalive off | IDLE[,INTVL,CNT] (seconds); the ranges are checked by
 * the library. */
static int parse_keepalive(const char *value, struct rb_config *cfg)
{
	unsigned v[3] = {0, cfg->keepalive_intvl_s, cfg->keepalive_cnt};
	const char *p = value;
	char *end;

	if (strcmp(value, "off") == 0) {
		cfg->keepalive_idle_s = 0;
		return 0;
	}
	for (int i = 0; i < 3; i++) {
		unsigned long long x;
		if (*p < '0' || *p > '9')
			goto bad;
		errno = 0;
		x = strtoull(p, &end, 10);
		if (errno || x > UINT_MAX || (i == 0 && x == 0))
			goto bad;
		v[i] = (unsigned)x;
		p = end;
		if (*p == '\0')
			break;
		if (*p != ',' || i == 2)
			goto bad;
		p++;
	}
	if (*p)
		goto bad;
	cfg->keepalive_idle_s = v[0];
	cfg->keepalive_intvl_s = v[1];
	cfg->keepalive_cnt = v[2];
	return 0;
bad:
	return bad_value("--keepalive", value,
	                 "expected off or IDLE[,INTVL,CNT] in seconds (idle and interval "
	                 "1 to 32767, count 1 to 127)");
}

/* --cpus 0,2-3: the CPUs, in order; worker i runs on the i-th. */
static int parse_cpus(const char *value, struct rb_config *cfg)
{
	const char *p = value;
	unsigned n = 0;

	while (*p) {
		unsigned long a, b;
		char *end;
		if (*p < '0' || *p > '9')
			goto bad;
		a = b = strtoul(p, &end, 10);
		p = end;
		if (*p == '-') {
			p++;
			if (*p < '0' || *p > '9')
				goto bad;
			b = strtoul(p, &end, 10);
			p = end;
		}
		if (a > b || b >= 4096)
			goto bad;
		for (unsigned long c = a; c <= b; c++) {
			if (n == RB_MAX_THREADS)
				return bad_value("--cpus", value,
				                 "more CPUs than the most threads (64)");
			cfg->cpus[n++] = (int)c;
		}
		if (*p == ',')
			p++;
		else if (*p)
			goto bad;
	}
	if (n == 0)
		goto bad;
	cfg->n_cpus = n;
	return 0;
bad:
	return bad_value("--cpus", value, "expected a list such as 0,2-3");
}

/* --uring-off bundle,inc,batch: a set of RB_URING_* bits. */
static int parse_uring_off(const char *value, unsigned *out)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {{"bundle", RB_URING_BUNDLE}, {"inc", RB_URING_INC}, {"batch", RB_URING_BATCH}};
	const char *p = value;
	unsigned bits = 0;

	while (*p) {
		size_t len = strcspn(p, ","), i;
		for (i = 0; i < sizeof(names) / sizeof(names[0]); i++)
			if (strlen(names[i].name) == len && strncmp(p, names[i].name, len) == 0)
				break;
		if (i == sizeof(names) / sizeof(names[0]))
			return bad_value("--uring-off", value,
			                 "expected a list of bundle, inc, batch");
		bits |= names[i].bit;
		p += len;
		if (*p == ',')
			p++;
	}
	*out = bits;
	return 0;
}

/* "expected epoll, poll, select, uring, sockmap or auto", from the engine table. */
static const char *engine_choices(void)
{
	static char buf[160];
	enum rb_engine e[16];
	size_t n = rb_engine_list(e, 16), off;

	off = (size_t)snprintf(buf, sizeof(buf), "expected ");
	for (size_t i = 0; i < n && i < 16 && off < sizeof(buf); i++)
		off += (size_t)snprintf(buf + off, sizeof(buf) - off, "%s, ", rb_engine_name(e[i]));
	if (off >= 2 && off < sizeof(buf))
		snprintf(buf + off - 2, sizeof(buf) - (off - 2), " or auto");
	return buf;
}

/* --list-engines: the engines that can run here, in preference order, each
 * with what it supports ("epoll udp splice relay services level"). */
static void list_engines(void)
{
	enum rb_engine e[16];
	size_t n = rb_engine_list(e, 16);

	for (size_t i = 0; i < n && i < 16; i++) {
		char feat[128];
		if (rb_engine_available(e[i], NULL, 0) != 0)
			continue;
		rb_engine_features(e[i], feat, sizeof(feat));
		printf("%s%s%s\n", rb_engine_name(e[i]), *feat ? " " : "", feat);
	}
}

/* ---- impairments: flags from the table, --impair-file, SIGHUP ---- */

static const char *g_impair_file;
static volatile sig_atomic_t g_hup_quit;

/* The file's impairments into imp; 0, or -1 with the reason logged. */
static int read_impair_file(const struct rb_config *cfg, struct rb_impair *imp)
{
	char text[65536], err[512];
	FILE *f = fopen(g_impair_file, "r");
	size_t n;

	if (!f) {
		rb_log(cfg, RB_LOG_ERR, "--impair-file %s: %s", g_impair_file, strerror(errno));
		return -1;
	}
	n = fread(text, 1, sizeof(text) - 1, f);
	text[n] = '\0';
	fclose(f);
	if (rb_impair_parse(imp, text, err, sizeof(err)) < 0) {
		rb_log(cfg, RB_LOG_ERR, "--impair-file %s: %s", g_impair_file, err);
		return -1;
	}
	return 0;
}

static void log_impairments(const struct rb_config *cfg, const char *when)
{
	struct rb_impair imp;
	char d[1024];

	rb_server_impair(g_srv, &imp);
	rb_impair_describe(&imp, d, sizeof(d));
	rb_log(cfg, RB_LOG_INFO, "impairments%s: %s (replay with --seed %" PRIu64 ")", when, d,
	       imp.seed);
}

/* SIGHUP, taken by this thread alone: the file again, for new sessions. */
static void *hup_main(void *arg)
{
	const struct rb_config *cfg = arg;
	sigset_t hup;
	int sig;

	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	while (sigwait(&hup, &sig) == 0 && !g_hup_quit) {
		struct rb_impair imp;
		char err[512];
		if (read_impair_file(cfg, &imp) < 0)
			continue; /* the old ones stay */
		if (rb_server_set_impair(g_srv, &imp, err, sizeof(err)) < 0) {
			rb_log(cfg, RB_LOG_ERR, "--impair-file %s: %s", g_impair_file, err);
			continue;
		}
		log_impairments(cfg, " (SIGHUP, new sessions)");
	}
	return NULL;
}

static void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

static void print_listening(const struct rb_server *srv, const struct rb_config *cfg)
{
	for (size_t i = 0; i < cfg->n_listen; i++)
		rb_log(cfg, RB_LOG_INFO, "listening on %s", rb_server_listen_url(srv, i));
}

/* In the engine line's parentheses: what the engine chose, else the trigger. */
static const char *engine_detail(const struct rb_server *srv, const struct rb_config *cfg)
{
	const char *d = rb_server_engine_detail(srv);

	return *d ? d : rb_trigger_name(cfg->trigger);
}

int main(int argc, char **argv)
{
	enum {
		OPT_URING_ENTRIES = 200,
		OPT_URING_BUFFERS,
		OPT_URING_SQPOLL,
		OPT_URING_OFF,
		OPT_URING_BATCH,
		OPT_URING_SEND_ZC
	};
	enum { OPT_METRICS = 400, OPT_PIDFILE, OPT_DAEMON, OPT_LOGFILE };
	enum {
		OPT_TRIGGER = 256,
		OPT_COPY,
		OPT_CHUNK,
		OPT_CONNBUF,
		OPT_MAXMEM,
		OPT_SHUTDOWN,
		OPT_LIST,
		OPT_PIPE,
		OPT_KEEPALIVE,
		OPT_USER_TIMEOUT,
		OPT_UNIX_MODE,
		OPT_UDP_RATE,
		OPT_UDP_LOW,
		OPT_SERVICE,
		OPT_FORWARD,
		OPT_CONNECT_TIMEOUT,
		OPT_MAX_CONNS,
		OPT_IDLE_TIMEOUT,
		OPT_WRITE_TIMEOUT,
		OPT_LOG_CONNECTIONS,
		OPT_LOG_FORMAT,
		OPT_STATS_INTERVAL,
		OPT_REUSEPORT,
		OPT_CPUS,
		OPT_BUSY_POLL,
		OPT_LOG_TIMESTAMPS
	};
	static const struct option opts[] = {
	        {"listen", required_argument, NULL, 'l'},
	        {"engine", required_argument, NULL, 'e'},
	        {"trigger", required_argument, NULL, OPT_TRIGGER},
	        {"copy", required_argument, NULL, OPT_COPY},
	        {"threads", required_argument, NULL, 't'},
	        {"chunk-size", required_argument, NULL, OPT_CHUNK},
	        {"conn-buffer", required_argument, NULL, OPT_CONNBUF},
	        {"max-memory", required_argument, NULL, OPT_MAXMEM},
	        {"shutdown-timeout", required_argument, NULL, OPT_SHUTDOWN},
	        {"uring-entries", required_argument, NULL, OPT_URING_ENTRIES},
	        {"uring-buffers", required_argument, NULL, OPT_URING_BUFFERS},
	        {"uring-sqpoll", required_argument, NULL, OPT_URING_SQPOLL},
	        {"uring-off", required_argument, NULL, OPT_URING_OFF},
	        {"uring-batch-us", required_argument, NULL, OPT_URING_BATCH},
	        {"uring-send-zc", required_argument, NULL, OPT_URING_SEND_ZC},
	        {"pipe-size", required_argument, NULL, OPT_PIPE},
	        {"list-engines", no_argument, NULL, OPT_LIST},
	        {"keepalive", required_argument, NULL, OPT_KEEPALIVE},
	        {"user-timeout", required_argument, NULL, OPT_USER_TIMEOUT},
	        {"unix-mode", required_argument, NULL, OPT_UNIX_MODE},
	        {"udp-rate", required_argument, NULL, OPT_UDP_RATE},
	        {"udp-allow-low-ports", no_argument, NULL, OPT_UDP_LOW},
	        {"service", required_argument, NULL, OPT_SERVICE},
	        {"forward", required_argument, NULL, OPT_FORWARD},
	        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TIMEOUT},
	        {"max-conns", required_argument, NULL, OPT_MAX_CONNS},
	        {"idle-timeout", required_argument, NULL, OPT_IDLE_TIMEOUT},
	        {"write-timeout", required_argument, NULL, OPT_WRITE_TIMEOUT},
	        {"log-connections", no_argument, NULL, OPT_LOG_CONNECTIONS},
	        {"log-format", required_argument, NULL, OPT_LOG_FORMAT},
	        {"stats-interval", required_argument, NULL, OPT_STATS_INTERVAL},
	        {"reuseport", no_argument, NULL, OPT_REUSEPORT},
	        {"cpus", required_argument, NULL, OPT_CPUS},
	        {"busy-poll", required_argument, NULL, OPT_BUSY_POLL},
	        {"metrics", required_argument, NULL, OPT_METRICS},
	        {"pidfile", required_argument, NULL, OPT_PIDFILE},
	        {"daemon", no_argument, NULL, OPT_DAEMON},
	        {"logfile", required_argument, NULL, OPT_LOGFILE},
	        {"verbose", no_argument, NULL, 'v'},
	        {"quiet", no_argument, NULL, 'q'},
	        {"log-timestamps", no_argument, NULL, OPT_LOG_TIMESTAMPS},
	        {"help", no_argument, NULL, 'h'},
	        {"version", no_argument, NULL, 'V'},
	        {0},
	};
	/* The impairment flags come from the library's table (rb_impair_flag). */
	enum { OPT_IMPAIR = 512, OPT_IMPAIR_FILE = 1000 };
	struct option all_opts[sizeof(opts) / sizeof(opts[0]) + 40];
	size_t n_opts = sizeof(opts) / sizeof(opts[0]) - 1, n_impair = 0;
	pthread_t hup_thread;
	bool hup_started = false;
	struct rb_config cfg;
	struct rb_metrics *metrics = NULL;
	const char *metrics_url = NULL, *pidfile = NULL, *logfile = NULL;
	bool daemonize = false;
	struct rb_stats st;
	struct sigaction sa;
	char err[8192]; /* room for a whole over-long URL in the message */
	unsigned long ul;
	int c, rc;

	rb_config_init(&cfg);
	memcpy(all_opts, opts, n_opts * sizeof(opts[0]));
	for (const char *name; (name = rb_impair_flag(n_impair)) && n_impair < 38; n_impair++)
		all_opts[n_opts++] =
		        (struct option){name, required_argument, NULL, OPT_IMPAIR + (int)n_impair};
	all_opts[n_opts++] =
	        (struct option){"impair-file", required_argument, NULL, OPT_IMPAIR_FILE};
	all_opts[n_opts] = (struct option){0};
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":l:e:t:vqhV", all_opts, NULL)) != -1) {
		if (c >= OPT_IMPAIR && c < OPT_IMPAIR + (int)n_impair) {
			if (rb_impair_set(&cfg.impair, rb_impair_flag((size_t)(c - OPT_IMPAIR)),
			                  optarg, err, sizeof(err)) < 0) {
				fprintf(stderr, "rebound: %s\n", err);
				return EXIT_USAGE;
			}
			continue;
		}
		if (c == OPT_IMPAIR_FILE) {
			g_impair_file = optarg;
			continue;
		}
		switch (c) {
		case 'l':
			if (cfg.n_listen == RB_MAX_LISTEN)
				return bad_value("--listen", optarg,
				                 "too many listeners (at most 16)");
			cfg.listen[cfg.n_listen++] = optarg;
			break;
		case 'e':
			if (rb_engine_parse(optarg, &cfg.engine) < 0)
				return bad_value("--engine", optarg, engine_choices());
			break;
		case OPT_TRIGGER:
			if (rb_trigger_parse(optarg, &cfg.trigger) < 0)
				return bad_value("--trigger", optarg, "expected edge or level");
			break;
		case OPT_COPY:
			if (rb_copy_parse(optarg, &cfg.copy) < 0)
				return bad_value("--copy", optarg, "expected writev or splice");
			break;
		case 't':
			if ((rc = parse_uint_flag("--threads", optarg, &cfg.threads)))
				return rc;
			break;
		case OPT_CHUNK:
			if ((rc = parse_size_flag("--chunk-size", optarg, &cfg.chunk_size)))
				return rc;
			break;
		case OPT_CONNBUF:
			if ((rc = parse_size_flag("--conn-buffer", optarg, &cfg.conn_buffer)))
				return rc;
			break;
		case OPT_MAXMEM:
			if ((rc = parse_size_flag("--max-memory", optarg, &cfg.max_memory)))
				return rc;
			break;
		case OPT_PIPE:
			if ((rc = parse_size_flag("--pipe-size", optarg, &cfg.pipe_size)))
				return rc;
			break;
		case OPT_SHUTDOWN:
			if ((rc = parse_uint_flag("--shutdown-timeout", optarg,
			                          &cfg.shutdown_timeout_ms)))
				return rc;
			break;
		case OPT_URING_ENTRIES:
			if ((rc = parse_uint_flag("--uring-entries", optarg, &cfg.uring_entries)))
				return rc;
			break;
		case OPT_URING_BUFFERS:
			if ((rc = parse_uint_flag("--uring-buffers", optarg, &cfg.uring_buffers)))
				return rc;
			break;
		case OPT_URING_SQPOLL:
			if ((rc = parse_uint_flag("--uring-sqpoll", optarg, &cfg.uring_sqpoll_ms)))
				return rc;
			break;
		case OPT_KEEPALIVE:
			if ((rc = parse_keepalive(optarg, &cfg)))
				return rc;
			break;
		case OPT_USER_TIMEOUT:
			if ((rc = parse_uint_flag("--user-timeout", optarg, &cfg.user_timeout_ms)))
				return rc;
			break;
		case OPT_UNIX_MODE: {
			char *end;
			errno = 0;
			ul = strtoul(optarg, &end, 8);
			if (!*optarg || *end || errno || ul > UINT_MAX ||
			    strspn(optarg, "01234567") != strlen(optarg))
				return bad_value(
				        "--unix-mode", optarg,
				        "expected an octal mode from 0 to 0777, such as 0660");
			cfg.unix_mode = (unsigned)ul;
			break;
		}
		case OPT_UDP_RATE:
			if ((rc = parse_uint_flag("--udp-rate", optarg, &cfg.udp_rate)))
				return rc;
			break;
		case OPT_SERVICE:
			if (rb_service_parse(optarg, &cfg.service) < 0)
				return bad_value("--service", optarg,
				                 "expected echo, discard, chargen or sockperf");
			break;
		case OPT_FORWARD:
			cfg.forward = optarg;
			break;
		case OPT_CONNECT_TIMEOUT:
			if ((rc = parse_uint_flag("--connect-timeout", optarg,
			                          &cfg.connect_timeout_ms)))
				return rc;
			break;
		case OPT_MAX_CONNS:
			if ((rc = parse_uint_flag("--max-conns", optarg, &cfg.max_conns)))
				return rc;
			break;
		case OPT_IDLE_TIMEOUT:
			if ((rc = parse_uint_flag("--idle-timeout", optarg, &cfg.idle_timeout_ms)))
				return rc;
			break;
		case OPT_WRITE_TIMEOUT:
			if ((rc = parse_uint_flag("--write-timeout", optarg,
			                          &cfg.write_timeout_ms)))
				return rc;
			break;
		case OPT_LOG_CONNECTIONS:
			cfg.log_connections = true;
			break;
		case OPT_LOG_FORMAT:
			if (strcmp(optarg, "text") != 0 && strcmp(optarg, "json") != 0)
				return bad_value("--log-format", optarg, "expected text or json");
			cfg.log_json = optarg[0] == 'j';
			break;
		case OPT_STATS_INTERVAL:
			if ((rc = parse_uint_flag("--stats-interval", optarg,
			                          &cfg.stats_interval_ms)))
				return rc;
			break;
		case OPT_REUSEPORT:
			cfg.reuseport = true;
			break;
		case OPT_CPUS:
			if ((rc = parse_cpus(optarg, &cfg)))
				return rc;
			break;
		case OPT_BUSY_POLL:
			if ((rc = parse_uint_flag("--busy-poll", optarg, &cfg.busy_poll_us)))
				return rc;
			break;
		case OPT_UDP_LOW:
			cfg.udp_low_ports = true;
			break;
		case OPT_URING_OFF:
			if ((rc = parse_uring_off(optarg, &cfg.uring_off)))
				return rc;
			break;
		case OPT_URING_BATCH:
			if ((rc = parse_uint_flag("--uring-batch-us", optarg, &cfg.uring_batch_us)))
				return rc;
			break;
		case OPT_URING_SEND_ZC:
			if (strcmp(optarg, "off") == 0)
				cfg.uring_send_zc = 0;
			else if ((rc = rb_parse_size(optarg, &cfg.uring_send_zc)) < 0)
				return bad_value(
				        "--uring-send-zc", optarg,
				        rc == -ERANGE
				                ? "too large"
				                : "expected a size such as 4096 or 16k, or off");
			break;
		case OPT_METRICS:
			metrics_url = optarg;
			break;
		case OPT_PIDFILE:
			if (!*optarg)
				return bad_value("--pidfile", optarg, "expected a path");
			pidfile = optarg;
			break;
		case OPT_DAEMON:
			daemonize = true;
			break;
		case OPT_LOGFILE:
			if (!*optarg)
				return bad_value("--logfile", optarg, "expected a path");
			logfile = optarg;
			break;
		case OPT_LIST:
			list_engines();
			return 0;
		case 'v':
			cfg.log_level = RB_LOG_DEBUG;
			break;
		case 'q':
			cfg.log_level = RB_LOG_ERR;
			break;
		case OPT_LOG_TIMESTAMPS:
			cfg.log_timestamps = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		case 'V':
			printf("rebound %s\n", RB_VERSION_STRING);
			return 0;
		case ':':
			fprintf(stderr, "rebound: option '%s' needs a value\n", argv[optind - 1]);
			return EXIT_USAGE;
		default:
			fprintf(stderr, "rebound: unknown option '%s' (see --help)\n",
			        argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "rebound: unexpected argument '%s' (see --help)\n", argv[optind]);
		return EXIT_USAGE;
	}
	if (g_impair_file) {
		/* The file holds the whole set (it is read again on SIGHUP); only
		 * --seed may also be given, for a file without one. */
		struct rb_impair only_seed = {.seed = cfg.impair.seed,
		                              .seed_set = cfg.impair.seed_set};
		bool seed_set = cfg.impair.seed_set;
		uint64_t seed = cfg.impair.seed;
		if (memcmp(&cfg.impair, &only_seed, sizeof(only_seed)) != 0) {
			fprintf(stderr,
			        "rebound: --impair-file holds the impairments: give them in "
			        "the file, not as flags too (--seed excepted)\n");
			return EXIT_USAGE;
		}
		if (read_impair_file(&cfg, &cfg.impair) < 0)
			return EXIT_USAGE;
		if (!cfg.impair.seed_set && seed_set) {
			cfg.impair.seed = seed;
			cfg.impair.seed_set = true;
		}
	}
	/* Socket activation: systemd's sockets join any --listen URLs. */
	static char fd_urls[RB_MAX_LISTEN][16];
	int nfds = rb_sd_listen_fds();
	if (nfds < 0) {
		fprintf(stderr, "rebound: invalid LISTEN_FDS from the service manager\n");
		return EXIT_USAGE;
	}
	for (int i = 0; i < nfds; i++) {
		if (cfg.n_listen == RB_MAX_LISTEN) {
			fprintf(stderr, "rebound: too many listeners (at most %d)\n",
			        RB_MAX_LISTEN);
			return EXIT_USAGE;
		}
		snprintf(fd_urls[i], sizeof(fd_urls[i]), "fd:%d", RB_SD_LISTEN_FDS_START + i);
		cfg.listen[cfg.n_listen++] = fd_urls[i];
	}
	if (cfg.n_listen == 0)
		cfg.listen[cfg.n_listen++] = "tcp://127.0.0.1:7007";
	/* What can be refused before going to the background, is. */
	if (pidfile && rb_pidfile_check(pidfile, err, sizeof(err)) < 0) {
		rb_log(&cfg, RB_LOG_ERR, "%s", err);
		return EXIT_USAGE;
	}
	int log_fd = logfile ? rb_logfile_open(logfile, err, sizeof(err)) : -1;
	if (logfile && log_fd < 0) {
		rb_log(&cfg, RB_LOG_ERR, "%s", err);
		return EXIT_RUNTIME;
	}
	if (!daemonize && log_fd >= 0)
		rb_output_to(log_fd);
	if (daemonize) {
		int status;
		rc = rb_daemon_start(log_fd, &status, err, sizeof(err));
		if (rc < 0) {
			rb_log(&cfg, RB_LOG_ERR, "%s", err);
			return EXIT_RUNTIME;
		}
		if (rc > 0)
			return status; /* the invoking process: the daemon has reported */
	}
	if (rb_sd_notify_init() < 0)
		rb_log(&cfg, RB_LOG_WARNING, "ignoring an invalid NOTIFY_SOCKET");

	raise_nofile();

	rc = rb_server_create(&cfg, &g_srv, err, sizeof(err));
	if (rc < 0) {
		if (rc == -ENOTSUP || rc == -ENOSYS || rc == -EPERM)
			return startup_failed(&cfg, EXIT_UNAVAILABLE, err);
		return startup_failed(&cfg, rc == -EINVAL ? EXIT_USAGE : EXIT_RUNTIME, err);
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	sa.sa_handler = on_stats_signal;
	sigaction(SIGUSR1, &sa, NULL);

	/* The endpoint, then the pidfile: once that names us, we are listening. */
	if (metrics_url &&
	    (rc = rb_metrics_start(g_srv, metrics_url, &metrics, err, sizeof(err))) < 0)
		rc = rc == -EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
	else if (pidfile && (rc = rb_pidfile_write(pidfile, err, sizeof(err))) < 0)
		rc = rc == -EEXIST || rc == -EINVAL ? EXIT_USAGE : EXIT_RUNTIME;
	if (rc != 0) {
		struct rb_server *srv = g_srv;
		g_srv = NULL;
		rb_metrics_stop(metrics);
		rb_server_destroy(srv);
		return startup_failed(&cfg, rc, err);
	}
	print_listening(g_srv, &cfg);
	if (metrics)
		rb_log(&cfg, RB_LOG_INFO, "metrics on %s", rb_metrics_url(metrics));
	if (cfg.forward)
		rb_log(&cfg, RB_LOG_INFO, "relaying to %s (connect timeout %u ms)", cfg.forward,
		       cfg.connect_timeout_ms);
	else if (cfg.service != RB_SERVICE_ECHO)
		rb_log(&cfg, RB_LOG_INFO, "service %s", rb_service_name(cfg.service));
	rb_log(&cfg, RB_LOG_INFO,
	       "engine %s (%s), copy %s, %u thread%s, chunk %zu, conn-buffer %zu",
	       rb_engine_name(rb_server_engine(g_srv)), engine_detail(g_srv, &cfg),
	       rb_copy_name(cfg.copy), cfg.threads, cfg.threads == 1 ? "" : "s", cfg.chunk_size,
	       cfg.conn_buffer);
	if (rb_impair_any(&cfg.impair) || g_impair_file)
		log_impairments(&cfg, "");
	if (g_impair_file) {
		/* Blocked here before the workers start, so only hup_main takes it. */
		sigset_t hup;
		sigemptyset(&hup);
		sigaddset(&hup, SIGHUP);
		pthread_sigmask(SIG_BLOCK, &hup, NULL);
		hup_started = pthread_create(&hup_thread, NULL, hup_main, &cfg) == 0;
	}
	{
		char status[160];
		snprintf(status, sizeof(status), "READY=1\nSTATUS=%s with the %s engine",
		         cfg.forward                      ? "relaying"
		         : cfg.service == RB_SERVICE_ECHO ? "echoing"
		                                          : rb_service_name(cfg.service),
		         rb_engine_name(rb_server_engine(g_srv)));
		rb_sd_notify(status);
	}
	rb_daemon_ready(0, NULL);
	if (rb_sd_watchdog_start(g_srv, &cfg) < 0)
		rb_log(&cfg, RB_LOG_WARNING, "ignoring an invalid WATCHDOG_USEC");
	rc = rb_server_run(g_srv);
	if (hup_started) {
		g_hup_quit = 1;
		pthread_kill(hup_thread, SIGHUP);
		pthread_join(hup_thread, NULL);
	}
	rb_sd_watchdog_stop();
	rb_metrics_stop(metrics);
	rb_server_stats(g_srv, &st);
	rb_log(&cfg, RB_LOG_INFO,
	       "stopped: %" PRIu64 " connections, %" PRIu64 " bytes in, %" PRIu64
	       " bytes out, engine %s",
	       st.accepted, st.bytes_in, st.bytes_out, rb_engine_name(rb_server_engine(g_srv)));
	/* Not a clean stop: say what the deadline cut (peers that kept their
	 * echo unread past --shutdown-timeout got an RST). */
	if (st.stop_dropped_conns)
		rb_log(&cfg, RB_LOG_WARNING,
		       "shutdown deadline reached: %" PRIu64 " connection%s reset, %" PRIu64
		       " echoed bytes never delivered",
		       st.stop_dropped_conns, st.stop_dropped_conns == 1 ? "" : "s",
		       st.stop_dropped_bytes);
	{
		struct rb_server *srv = g_srv;
		g_srv = NULL;
		rb_server_destroy(srv);
	}
	rb_pidfile_remove();
	rb_sd_notify_fini();
	if (rc < 0) {
		rb_log(&cfg, RB_LOG_ERR, "%s", strerror(-rc));
		return EXIT_RUNTIME;
	}
	return 0;
}
