// SPDX-License-Identifier: MIT
/*
 * rebound-bench: a load generator for echo servers. Every echoed byte is
 * checked against a per-connection pseudo-random stream; latency goes into
 * a log-linear histogram. See opts.c for the command line.
 */
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <time.h>
#include <unistd.h>

#include "cpustat.h"
#include "rb_config.h"
#include "run.h"

#define NS 1000000000ULL

struct result {
	double seconds; /* measured time */
	uint64_t msgs;
	uint64_t bytes;
	uint64_t verified;
	uint64_t lost;
	uint64_t late;
	uint64_t reordered;
	unsigned connected;
	unsigned connect_errors;
	unsigned unserved;
	struct rbb_hist *hist;
	struct rbb_hist *conn_hist; /* --crr */
	int fds0, fds1;             /* --crr with --server-pid: the server's descriptors */
	bool have_cpu;
	double cpu_s;       /* server (process tree) */
	unsigned srv_procs; /* processes in the server's tree at the end */
	bool have_cli;
	double cli_s; /* rebound-bench itself (getrusage) */
	bool have_sys;
	double sys_s; /* every CPU's busy time (/proc/stat) */
	struct rbb_cpustat *sys0, *sys1;
	struct rbb_tcpagg tcpi;
	char timestamp[32]; /* the run's start, UTC */
	double rate_achieved;
	bool rate_behind; /* open loop: more than 5% under --rate */
	bool interrupted;
};

/* CPU counters at one edge of the measured window. */
struct sample {
	bool taken;
	bool have_srv, have_cli, have_sys;
	double srv, cli;
	unsigned srv_procs;
	struct rbb_cpustat sys;
};

static bool tree_warned;

/* --interval samples, kept for the JSON report. */
struct iv_sample {
	double t;
	const char *phase;
	double msgs_per_s, mb_per_s;
	unsigned errors;
	struct rbb_tcpagg tcpi;
};

static struct iv_sample *ivs;
static size_t n_ivs, cap_ivs;

static void tcpi_json(FILE *f, const struct rbb_tcpagg *a)
{
	double n = a->n ? (double)a->n : 1;

	fprintf(f,
	        "{\"samples\": %llu, \"rtt_us\": {\"min\": %u, \"mean\": %.1f, \"max\": %u}, "
	        "\"rttvar_us_mean\": %.1f, \"retrans\": %llu, "
	        "\"cwnd\": {\"min\": %u, \"mean\": %.1f, \"max\": %u}}",
	        (unsigned long long)a->n, a->rtt_min, a->rtt_sum / n, a->rtt_max, a->rttvar_sum / n,
	        (unsigned long long)a->retrans, a->cwnd_min, a->cwnd_sum / n, a->cwnd_max);
}

static void iv_json(FILE *f, const struct rbb_opts *o, const struct iv_sample *v)
{
	fprintf(f,
	        "{\"t\": %.3f, \"phase\": \"%s\", \"msgs_per_s\": %.3f, \"mb_per_s\": %.6f, "
	        "\"errors\": %u",
	        v->t, v->phase, v->msgs_per_s, v->mb_per_s, v->errors);
	if (o->tcp_info) {
		fprintf(f, ", \"tcp_info\": ");
		tcpi_json(f, &v->tcpi);
	}
	fprintf(f, "}");
}

/* CPU seconds of @pid's process tree, or -errno; warns once when only @pid could be counted. */
static int server_cpu(pid_t pid, double *out, unsigned *nprocs)
{
	int rc = rbb_tree_cpu(NULL, pid, out, nprocs);

	if (rc > 0 && !tree_warned) {
		fprintf(stderr,
		        "rebound-bench: warning: cannot walk /proc (%s): --server-pid counts "
		        "process %d only, not its children\n",
		        strerror(rc), (int)pid);
		tree_warned = true;
	}
	return rc > 0 ? 0 : rc;
}

static void take_sample(const struct rbb_opts *o, struct sample *s)
{
	struct rusage ru;

	s->taken = true;
	if (o->server_pid)
		s->have_srv = server_cpu(o->server_pid, &s->srv, &s->srv_procs) == 0;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		s->cli = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
		         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
		s->have_cli = true;
	}
	if (o->cpu_system)
		s->have_sys = rbb_cpustat_read(NULL, &s->sys) == 0;
}

static int raise_nofile(const struct rbb_opts *o)
{
	rlim_t need = (rlim_t)o->connections + 4 * o->threads + 32;
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	if (rl.rlim_cur >= need)
		return 0;
	if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
		fprintf(stderr,
		        "rebound-bench: %u connections need %llu file descriptors, but "
		        "RLIMIT_NOFILE's hard limit is %llu\n",
		        o->connections, (unsigned long long)need, (unsigned long long)rl.rlim_max);
		return -EMFILE;
	}
	rl.rlim_cur = need;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0)
		return -errno;
	return 0;
}

static double us(uint64_t ns)
{
	return (double)ns / 1000.0;
}

static const char *mode_name(const struct rbb_opts *o)
{
	return o->crr ? "crr" : o->rate > 0 ? "open" : "closed";
}

static void print_lat_human(const char *label, const struct rbb_hist *h)
{
	if (h->total)
		printf("%-12s min %.1f  p50 %.1f  p90 %.1f  p99 %.1f  p99.9 %.1f  max %.1f  mean "
		       "%.1f\n",
		       label, us(h->min), us(rbb_hist_percentile(h, 50)),
		       us(rbb_hist_percentile(h, 90)), us(rbb_hist_percentile(h, 99)),
		       us(rbb_hist_percentile(h, 99.9)), us(h->max), rbb_hist_mean(h) / 1000.0);
	else
		printf("%-12s no messages measured\n", label);
}

static void print_lat_json(const char *key, const struct rbb_hist *h)
{
	printf(" \"%s\": {\"min\": %.3f, \"p50\": %.3f, \"p90\": %.3f, \"p99\": %.3f, "
	       "\"p99_9\": %.3f, \"max\": %.3f, \"mean\": %.3f, \"stddev\": %.3f, \"count\": "
	       "%llu},\n",
	       key, h->total ? us(h->min) : 0, us(rbb_hist_percentile(h, 50)),
	       us(rbb_hist_percentile(h, 90)), us(rbb_hist_percentile(h, 99)),
	       us(rbb_hist_percentile(h, 99.9)), us(h->max), rbb_hist_mean(h) / 1000.0,
	       rbb_hist_stddev(h) / 1000.0, (unsigned long long)h->total);
}

static double per_mmsg(const struct result *r, double secs)
{
	return r->msgs ? secs / ((double)r->msgs / 1e6) : 0;
}

static double per_gib(const struct result *r, double secs)
{
	return r->bytes ? secs / ((double)r->bytes / 1073741824.0) : 0;
}

static void print_cpu(const struct result *r, double secs)
{
	printf("%.2f s", secs);
	if (r->msgs)
		printf(", %.3f s per million messages", per_mmsg(r, secs));
	if (r->bytes)
		printf(", %.3f s per GiB", per_gib(r, secs));
}

/* rebound-bench's CPU time over the window as a fraction of its threads' CPUs. */
static double client_util(const struct rbb_opts *o, const struct result *r)
{
	return r->seconds > 0 ? r->cli_s / r->seconds / o->threads : 0;
}

/* Every client thread busy 90% of the time: the numbers may be the client's limit. */
static bool client_limited(const struct rbb_opts *o, const struct result *r)
{
	return r->have_cli && r->seconds >= 0.2 && client_util(o, r) >= 0.9;
}

static void print_human(const struct rbb_opts *o, const struct rbb_run *run, const struct result *r)
{
	const struct rbb_hist *h = r->hist;
	double secs = r->seconds > 0 ? r->seconds : 1e-9;

	printf("target       %s: %u connections (%u active), %u thread%s\n", o->url, o->connections,
	       o->active, o->threads, o->threads == 1 ? "" : "s");
	if (o->expect != RBB_EXPECT_ECHO)
		printf("load         %s: %zu B per %s call, %.2f s measured",
		       o->expect == RBB_EXPECT_NONE ? "send only (discard)"
		                                    : "receive only (chargen)",
		       o->size, o->expect == RBB_EXPECT_NONE ? "send" : "recv", r->seconds);
	else
		printf("load         %s loop", mode_name(o));
	if (o->rate > 0)
		printf(" at %.0f msg/s", o->rate);
	if (o->expect == RBB_EXPECT_ECHO)
		printf(", %zu B messages, depth %u, %.2f s measured", o->size, o->depth,
		       r->seconds);
	if (o->warmup > 0)
		printf(" after %.2f s warmup", o->warmup);
	printf("\n");
	if (o->crr) {
		printf("transactions %llu (%.0f tx/s): connect, %zu B echoed, close\n",
		       (unsigned long long)r->msgs, (double)r->msgs / secs, o->size);
		print_lat_human("connect us", r->conn_hist);
		print_lat_human("txn us", h);
	} else if (o->expect == RBB_EXPECT_NONE) {
		printf("throughput   %.2f MB/s %s\n", (double)r->bytes / secs / 1e6,
		       o->target.proto == RBB_PROTO_TCP
		               ? "acknowledged by the server's TCP (sent, none expected back)"
		               : "sent (unix: accepted by the socket, which has no "
		                 "acknowledgements)");
	} else if (o->expect == RBB_EXPECT_CHARGEN) {
		printf("throughput   %.2f MB/s of chargen pattern received\n",
		       (double)r->bytes / secs / 1e6);
	} else {
		printf("messages     %llu (%.0f msg/s)\n", (unsigned long long)r->msgs,
		       (double)r->msgs / secs);
		printf("throughput   %.2f MB/s echoed\n", (double)r->bytes / secs / 1e6);
		print_lat_human("latency us", h);
	}
	printf("connections  %u connected, %u connect errors", r->connected, r->connect_errors);
	if (r->unserved)
		printf(", %u idle not served", r->unserved);
	printf("\n");
	if (o->target.proto == RBB_PROTO_UDP)
		printf("udp          %llu datagrams lost, %llu late, %llu reordered\n",
		       (unsigned long long)r->lost, (unsigned long long)r->late,
		       (unsigned long long)r->reordered);
	if (r->have_cpu) {
		printf("server cpu   ");
		print_cpu(r, r->cpu_s);
		printf(" (%u process%s)\n", r->srv_procs, r->srv_procs == 1 ? "" : "es");
	}
	if (r->have_cli) {
		printf("client cpu   ");
		print_cpu(r, r->cli_s);
		printf(" (%.0f%% of %u CPU%s)\n", 100 * client_util(o, r), o->threads,
		       o->threads == 1 ? "" : "s");
	}
	if (r->have_sys) {
		printf("system cpu   ");
		print_cpu(r, r->sys_s);
		printf(" (all %u CPUs: %.0f%% busy", r->sys1->n_cpus,
		       100 * fmax(rbb_cpustat_util(r->sys0, r->sys1, -1), 0));
		for (int c = 0; c < RBB_MAX_CPUS; c++) {
			double u = rbb_cpustat_util(r->sys0, r->sys1, c);

			if (u >= 0)
				printf(", cpu%d %.0f%%", c, 100 * u);
		}
		printf(")\n");
	}
	if (o->crr && r->msgs && (r->have_cpu || r->have_sys))
		printf("per txn      server cpu %.1f us, system cpu %.1f us, client cpu %.1f us\n",
		       r->have_cpu ? r->cpu_s / (double)r->msgs * 1e6 : 0,
		       r->have_sys ? r->sys_s / (double)r->msgs * 1e6 : 0,
		       r->cli_s / (double)r->msgs * 1e6);
	if (r->fds0 >= 0)
		printf("server fds   %d before, %d after\n", r->fds0, r->fds1);
	if (o->tcp_info && r->tcpi.n)
		printf("tcp_info     %llu connections: rtt us min %u mean %.1f max %u, rttvar mean "
		       "%.1f, "
		       "%llu retransmits, cwnd min %u mean %.1f max %u\n",
		       (unsigned long long)r->tcpi.n, r->tcpi.rtt_min,
		       r->tcpi.rtt_sum / (double)r->tcpi.n, r->tcpi.rtt_max,
		       r->tcpi.rttvar_sum / (double)r->tcpi.n, (unsigned long long)r->tcpi.retrans,
		       r->tcpi.cwnd_min, r->tcpi.cwnd_sum / (double)r->tcpi.n, r->tcpi.cwnd_max);
	if (o->rate > 0)
		printf("rate         %.0f msg/s achieved of %.0f asked (%.1f%%)%s\n",
		       r->rate_achieved, o->rate, 100 * r->rate_achieved / o->rate,
		       r->rate_behind ? ": FELL BEHIND" : "");
	if (client_limited(o, r))
		printf("note         rebound-bench used %.0f%% of its CPU: the client, not the "
		       "server, may be the limit\n",
		       100 * client_util(o, r));
	printf("verified     %llu bytes %s, %s\n", (unsigned long long)r->verified,
	       o->expect == RBB_EXPECT_NONE      ? "acknowledged (connections closed cleanly)"
	       : o->expect == RBB_EXPECT_CHARGEN ? "of chargen pattern"
	                                         : "echoed",
	       run->n_errors ? "ERRORS (see stderr)" : "all correct");
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (ch == '"' || ch == '\\')
			printf("\\%c", ch);
		else if (ch < 0x20)
			printf("\\u%04x", ch);
		else
			putchar(ch);
	}
	putchar('"');
}

static void print_json(const struct rbb_opts *o, const struct rbb_run *run, const struct result *r)
{
	const struct rbb_hist *h = r->hist;
	double secs = r->seconds > 0 ? r->seconds : 1e-9;
	unsigned shown = run->n_errors < RBB_MAX_ERRORS ? run->n_errors : RBB_MAX_ERRORS;

	printf("{\"version\": \"%s\", \"timestamp\": \"%s\", \"target\": ", RB_VERSION_STRING,
	       r->timestamp);
	json_string(o->url);
	printf(", \"expect\": \"%s\", \"connections\": %u, \"active\": %u, \"threads\": %u, "
	       "\"size\": %zu, \"depth\": %u, \"mode\": \"%s\", \"rate\": %.3f, "
	       "\"warmup_s\": %.3f, \"seconds\": %.6f,\n",
	       rbb_expect_name(o->expect), o->connections, o->active, o->threads, o->size, o->depth,
	       mode_name(o), o->rate, o->warmup, r->seconds);
	printf(" \"messages\": %llu, \"bytes\": %llu, \"msgs_per_s\": %.3f, \"mb_per_s\": %.6f,\n",
	       (unsigned long long)r->msgs, (unsigned long long)r->bytes, (double)r->msgs / secs,
	       (double)r->bytes / secs / 1e6);
	print_lat_json("latency_us", h);
	if (o->crr) {
		print_lat_json("connect_latency_us", r->conn_hist);
		printf(" \"transactions\": %llu, \"tx_per_s\": %.3f,", (unsigned long long)r->msgs,
		       (double)r->msgs / secs);
		if (r->have_cpu && r->msgs)
			printf(" \"server_cpu_us_per_tx\": %.3f,",
			       r->cpu_s / (double)r->msgs * 1e6);
		if (r->have_sys && r->msgs)
			printf(" \"system_cpu_us_per_tx\": %.3f,",
			       r->sys_s / (double)r->msgs * 1e6);
		if (r->fds0 >= 0)
			printf(" \"server_fds_before\": %d, \"server_fds_after\": %d,", r->fds0,
			       r->fds1);
		printf("\n");
	}
	printf(" \"connected\": %u, \"connect_errors\": %u, \"unserved\": %u, \"verified_bytes\": "
	       "%llu, "
	       "\"udp_lost\": %llu, \"udp_late\": %llu, \"udp_reordered\": %llu,\n",
	       r->connected, r->connect_errors, r->unserved, (unsigned long long)r->verified,
	       (unsigned long long)r->lost, (unsigned long long)r->late,
	       (unsigned long long)r->reordered);
	if (r->have_cpu)
		printf(" \"server_cpu_s\": %.3f, \"server_cpu_s_per_mmsg\": %.6f, "
		       "\"server_cpu_s_per_gib\": %.6f, \"server_procs\": %u,\n",
		       r->cpu_s, per_mmsg(r, r->cpu_s), per_gib(r, r->cpu_s), r->srv_procs);
	if (r->have_cli)
		printf(" \"client_cpu_s\": %.3f, \"client_cpu_s_per_mmsg\": %.6f, "
		       "\"client_cpu_s_per_gib\": %.6f, \"client_cpu_util\": %.4f, "
		       "\"client_limited\": %s,\n",
		       r->cli_s, per_mmsg(r, r->cli_s), per_gib(r, r->cli_s), client_util(o, r),
		       client_limited(o, r) ? "true" : "false");
	if (r->have_sys) {
		bool first = true;

		printf(" \"system_cpu_s\": %.3f, \"system_cpu_s_per_mmsg\": %.6f, "
		       "\"system_cpu_s_per_gib\": %.6f, \"system_cpus\": %u, "
		       "\"system_cpu_util\": %.4f, \"system_cpu_util_by_cpu\": {",
		       r->sys_s, per_mmsg(r, r->sys_s), per_gib(r, r->sys_s), r->sys1->n_cpus,
		       fmax(rbb_cpustat_util(r->sys0, r->sys1, -1), 0));
		for (int c = 0; c < RBB_MAX_CPUS; c++) {
			double u = rbb_cpustat_util(r->sys0, r->sys1, c);

			if (u < 0)
				continue;
			printf("%s\"cpu%d\": %.4f", first ? "" : ", ", c, u);
			first = false;
		}
		printf("},\n");
	}
	if (o->rate > 0)
		printf(" \"rate_achieved\": %.3f, \"rate_behind\": %s,\n", r->rate_achieved,
		       r->rate_behind ? "true" : "false");
	if (o->tcp_info) {
		printf(" \"tcp_info\": ");
		tcpi_json(stdout, &r->tcpi);
		printf(",\n");
	}
	printf(" \"intervals\": [");
	for (size_t i = 0; i < n_ivs; i++) {
		printf(i ? ",\n  " : "\n  ");
		iv_json(stdout, o, &ivs[i]);
	}
	printf("],\n");
	printf(" \"interrupted\": %s, \"ok\": %s, \"errors\": [", r->interrupted ? "true" : "false",
	       run->n_errors ? "false" : "true");
	for (unsigned i = 0; i < shown; i++) {
		if (i)
			printf(", ");
		json_string(run->errors[i]);
	}
	printf("]}\n");
}

static int write_hgrm(const char *path, const struct rbb_hist *h)
{
	FILE *f = fopen(path, "we");
	int rc;

	if (!f)
		return -errno;
	rc = rbb_hist_write_hgrm(h, f, 1000.0, 5);
	if (fclose(f) && !rc)
		rc = -EIO;
	return rc;
}

static void progress(struct rbb_run *run, uint64_t now, uint64_t *last_t, uint64_t *last_m,
                     uint64_t *last_b)
{
	uint64_t m = 0, b = 0;
	double dt = (double)(now - *last_t) / 1e9;
	const char *phase = now < run->t_measure ? "warmup" : now < run->t_end ? "run" : "drain";

	for (unsigned i = 0; i < run->n_workers; i++) {
		m += atomic_load_explicit(&run->workers[i].prog_msgs, memory_order_relaxed);
		b += atomic_load_explicit(&run->workers[i].prog_bytes, memory_order_relaxed);
	}
	if (dt <= 0)
		return;
	struct iv_sample v = {.t = (double)(now - run->t_start) / 1e9,
	                      .phase = phase,
	                      .msgs_per_s = (double)(m - *last_m) / dt,
	                      .mb_per_s = (double)(b - *last_b) / dt / 1e6,
	                      .errors = run->n_errors};

	for (unsigned i = 0; run->o->tcp_info && i < run->n_workers; i++) {
		pthread_mutex_lock(&run->workers[i].tcpi_lock);
		rbb_tcpagg_merge(&v.tcpi, &run->workers[i].tcpi_iv);
		pthread_mutex_unlock(&run->workers[i].tcpi_lock);
	}
	if (run->o->json) {
		/* JSON lines on stderr, and the same samples in the report. */
		iv_json(stderr, run->o, &v);
		fputc('\n', stderr);
		if (n_ivs == cap_ivs) {
			size_t cap = cap_ivs ? 2 * cap_ivs : 64;
			struct iv_sample *nv = realloc(ivs, cap * sizeof(*nv));

			if (nv) {
				ivs = nv;
				cap_ivs = cap;
			}
		}
		if (n_ivs < cap_ivs)
			ivs[n_ivs++] = v;
	} else {
		fprintf(stderr, "rebound-bench: %7.1f s %-6s %10.0f msg/s %10.2f MB/s %u errors",
		        v.t, phase, v.msgs_per_s, v.mb_per_s, v.errors);
		if (run->o->tcp_info && v.tcpi.n)
			fprintf(stderr, " rtt %.0f us cwnd %.0f retrans %llu",
			        v.tcpi.rtt_sum / (double)v.tcpi.n,
			        v.tcpi.cwnd_sum / (double)v.tcpi.n,
			        (unsigned long long)v.tcpi.retrans);
		fputc('\n', stderr);
	}
	*last_t = now;
	*last_m = m;
	*last_b = b;
}

/*
 * The main thread waits for the workers while it prints progress lines,
 * samples the server's CPU time at the window's edges and turns SIGINT
 * and SIGTERM into a stop.
 */
static void supervise(struct rbb_run *run, int sfd, struct result *r, struct sample *s0,
                      struct sample *s1)
{
	const struct rbb_opts *o = run->o;
	uint64_t iv = (uint64_t)(o->interval * 1e9);
	uint64_t next_iv = iv ? run->t_start + iv : UINT64_MAX;
	uint64_t last_t = run->t_start, last_m = 0, last_b = 0;
	unsigned finished = 0;

	while (finished < run->n_workers) {
		struct pollfd pfd[2] = {{.fd = sfd, .events = POLLIN},
		                        {.fd = run->done_fd, .events = POLLIN}};
		uint64_t now = rbb_now(), wake = next_iv;
		int timeout;

		if (!o->messages) {
			if (!s0->taken && run->t_measure < wake)
				wake = run->t_measure;
			if (!s1->taken && run->t_end < wake)
				wake = run->t_end;
		}
		timeout = wake == UINT64_MAX ? -1
		          : wake > now       ? (int)((wake - now + 999999) / 1000000)
		                             : 0;
		if (poll(pfd, 2, timeout) < 0 && errno != EINTR)
			break;
		now = rbb_now();
		if (pfd[0].revents & POLLIN) {
			struct signalfd_siginfo si;

			if (read(sfd, &si, sizeof(si)) == sizeof(si)) {
				r->interrupted = true;
				atomic_store(&run->stop, 1);
			}
		}
		if (pfd[1].revents & POLLIN) {
			uint64_t v;

			if (read(run->done_fd, &v, sizeof(v)) == sizeof(v))
				finished += (unsigned)v;
		}
		if (!o->messages) {
			if (!s0->taken && now >= run->t_measure)
				take_sample(o, s0);
			if (!s1->taken && now >= run->t_end)
				take_sample(o, s1);
		}
		if (now >= next_iv) {
			progress(run, now, &last_t, &last_m, &last_b);
			next_iv += iv;
			if (next_iv <= now)
				next_iv = now + iv;
		}
	}
}

static int run_bench(const struct rbb_opts *o)
{
	struct rbb_run run = {0};
	struct result r = {0};
	struct sample *s0 = calloc(1, sizeof(*s0)), *s1 = calloc(1, sizeof(*s1));
	unsigned started = 0, i;
	uint64_t act_total = 0, quota_left, stop_time;
	sigset_t sigs;
	int sfd = -1, rc, status = 1;

	run.o = o;
	run.n_workers = o->threads;
	pthread_mutex_init(&run.err_lock, NULL);
	run.done_fd = eventfd(0, EFD_CLOEXEC);
	run.workers = calloc(o->threads, sizeof(*run.workers));
	rc = rbb_hist_create(&r.hist);
	if (rc >= 0)
		rc = rbb_hist_create(&r.conn_hist);
	if (run.done_fd < 0 || !run.workers || rc < 0 || !s0 || !s1) {
		fprintf(stderr, "rebound-bench: out of memory or descriptors\n");
		goto out;
	}
	for (i = 0; i < o->threads; i++) {
		rc = rbb_worker_init(&run.workers[i], &run, i);
		if (rc < 0) {
			fprintf(stderr, "rebound-bench: worker setup: %s\n", strerror(-rc));
			goto out_workers;
		}
	}
	/* Workers inherit the blocked mask; signals arrive through the signalfd. */
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
	pthread_barrier_init(&run.barrier, NULL, o->threads + 1);
	r.fds0 = r.fds1 = -1;
	if (o->crr && o->server_pid)
		r.fds0 = rbb_tree_fds(NULL, o->server_pid);
	for (i = 0; i < o->threads; i++) {
		rc = pthread_create(&run.workers[i].tid, NULL, rbb_worker_main, &run.workers[i]);
		if (rc) {
			fprintf(stderr, "rebound-bench: pthread_create: %s\n", strerror(rc));
			/* The barrier needs every party: a missing thread cannot be recovered. */
			exit(1);
		}
		started++;
	}
	pthread_barrier_wait(&run.barrier);

	/* Everyone has connected: hand out the -n quota and the rate by connections. */
	for (i = 0; i < o->threads; i++) {
		r.connected += run.workers[i].connected;
		r.connect_errors += run.workers[i].connect_errors;
		r.unserved += run.workers[i].unserved;
		act_total += run.workers[i].n_act;
	}
	run.n_active_connected = act_total;
	if (r.unserved)
		rbb_error(&run, false,
		          "%u idle connections were not served (no echo of their first byte)",
		          r.unserved);
	if (!r.connected && !o->crr)
		rbb_error(&run, true, "no connection to %s succeeded", o->url);
	quota_left = o->messages;
	for (i = 0; i < o->threads; i++) {
		struct rbb_worker *w = &run.workers[i];

		if (act_total) {
			w->quota = o->messages / act_total * w->n_act;
			if (quota_left >= w->quota)
				quota_left -= w->quota;
		}
		if (o->rate > 0 && w->n_act)
			w->period = 1e9 / (o->rate * (double)w->n_act / (double)act_total);
	}
	/* The remainder goes one message each to workers in turn. */
	for (i = 0; quota_left && act_total; i = (i + 1) % o->threads) {
		if (run.workers[i].n_act) {
			run.workers[i].quota++;
			quota_left--;
		}
	}
	{
		time_t t = time(NULL);
		struct tm tm;

		gmtime_r(&t, &tm);
		strftime(r.timestamp, sizeof(r.timestamp), "%Y-%m-%dT%H:%M:%SZ", &tm);
	}
	run.t_start = rbb_now();
	run.t_measure = run.t_start + (uint64_t)(o->warmup * 1e9);
	run.t_end = run.t_measure + (uint64_t)(o->duration * 1e9);
	if (o->messages)
		take_sample(o, s0);
	pthread_barrier_wait(&run.barrier);

	supervise(&run, sfd, &r, s0, s1);
	for (i = 0; i < started; i++)
		pthread_join(run.workers[i].tid, NULL);
	stop_time = rbb_now();
	if (r.interrupted)
		rbb_error(&run, false, "interrupted");
	if (r.fds0 >= 0) {
		/*
		 * The server may close its side just after our EOF arrived: give
		 * it up to a second to settle before calling it a leak.
		 */
		uint64_t until = rbb_now() + NS;

		do {
			r.fds1 = rbb_tree_fds(NULL, o->server_pid);
			if (r.fds1 <= r.fds0)
				break;
			poll(NULL, 0, 10);
		} while (rbb_now() < until);
		if (r.fds1 > r.fds0 && !run.n_errors)
			rbb_error(&run, false,
			          "the server's descriptors grew from %d to %d over the run",
			          r.fds0, r.fds1);
	}

	uint64_t last_done = run.t_start;

	for (i = 0; i < o->threads; i++) {
		struct rbb_worker *w = &run.workers[i];

		rbb_hist_merge(r.hist, w->hist);
		rbb_hist_merge(r.conn_hist, w->conn_hist);
		rbb_tcpagg_merge(&r.tcpi, &w->tcpi);
		if (o->crr) {
			r.connected += w->connected;
			r.connect_errors += w->connect_errors;
		}
		r.msgs += w->msgs;
		r.bytes += w->bytes;
		r.verified += w->verified;
		r.lost += w->lost;
		r.late += w->late;
		r.reordered += w->reordered;
		if (w->last_done > last_done)
			last_done = w->last_done;
	}
	if (o->messages) {
		r.seconds = (double)(last_done - run.t_start) / 1e9;
		take_sample(o, s1);
	} else {
		uint64_t end = stop_time < run.t_end ? stop_time : run.t_end;

		r.seconds = end > run.t_measure ? (double)(end - run.t_measure) / 1e9 : 0;
		if (!s1->taken)
			take_sample(o, s1);
	}
	/* A run stopped before its window began has no window: its start is its end. */
	if (!s0->taken)
		*s0 = *s1;
	r.have_cpu = s0->have_srv && s1->have_srv;
	r.cpu_s = s1->srv - s0->srv;
	r.srv_procs = s1->srv_procs;
	r.have_cli = s0->have_cli && s1->have_cli;
	r.cli_s = s1->cli - s0->cli;
	r.have_sys = s0->have_sys && s1->have_sys;
	if (r.have_sys) {
		r.sys_s = rbb_cpustat_busy_s(&s0->sys, &s1->sys, sysconf(_SC_CLK_TCK));
		r.sys0 = &s0->sys;
		r.sys1 = &s1->sys;
	}

	if (o->rate > 0 && r.seconds > 0) {
		r.rate_achieved = (double)r.msgs / r.seconds;
		r.rate_behind = r.rate_achieved < 0.95 * o->rate;
		if (r.rate_behind) {
			fprintf(stderr,
			        "rebound-bench: fell behind --rate: %.0f msg/s achieved of %.0f "
			        "asked (%.1f%%)\n",
			        r.rate_achieved, o->rate, 100 * r.rate_achieved / o->rate);
			if (o->strict)
				rbb_error(&run, false,
				          "--strict: the achieved rate (%.0f msg/s) is more than "
				          "5%% below --rate %.0f",
				          r.rate_achieved, o->rate);
		}
	}
	if (o->json)
		print_json(o, &run, &r);
	else
		print_human(o, &run, &r);
	fflush(stdout);
	if (o->hgrm) {
		rc = write_hgrm(o->hgrm, r.hist);
		if (rc < 0)
			rbb_error(&run, false, "cannot write %s: %s", o->hgrm, strerror(-rc));
	}
	for (i = 0; i < run.n_errors && i < RBB_MAX_ERRORS; i++)
		fprintf(stderr, "rebound-bench: %s\n", run.errors[i]);
	if (run.n_errors > RBB_MAX_ERRORS)
		fprintf(stderr, "rebound-bench: ... and %u more errors\n",
		        run.n_errors - RBB_MAX_ERRORS);
	if (run.n_errors)
		fprintf(stderr, "rebound-bench: FAILED\n");
	status = run.n_errors ? 1 : 0;
	pthread_barrier_destroy(&run.barrier);
out_workers:
	for (i = 0; i < o->threads && run.workers; i++)
		rbb_worker_fini(&run.workers[i]);
out:
	if (sfd >= 0)
		close(sfd);
	if (run.done_fd >= 0)
		close(run.done_fd);
	rbb_hist_destroy(r.hist);
	rbb_hist_destroy(r.conn_hist);
	free(s0);
	free(s1);
	free(ivs);
	free(run.workers);
	pthread_mutex_destroy(&run.err_lock);
	return status;
}

int main(int argc, char **argv)
{
	struct rbb_opts o;
	char err[512];
	unsigned nprocs;
	double cpu;

	if (rbb_opts_parse(&o, argc, argv, err, sizeof(err)) < 0) {
		fprintf(stderr, "rebound-bench: %s\n", err);
		return 2;
	}
	if (o.help) {
		fputs(rbb_usage, stdout);
		return 0;
	}
	if (o.version) {
		printf("rebound-bench %s\n", RB_VERSION_STRING);
		return 0;
	}
	if (o.server_pid && server_cpu(o.server_pid, &cpu, &nprocs) < 0) {
		fprintf(stderr, "rebound-bench: invalid --server-pid '%d': no such process\n",
		        (int)o.server_pid);
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	/* Open-loop sends are timed to microseconds: ask for a tight timer slack. */
	prctl(PR_SET_TIMERSLACK, 1UL, 0UL, 0UL, 0UL);
	if (raise_nofile(&o) < 0)
		return 1;
	return run_bench(&o);
}
