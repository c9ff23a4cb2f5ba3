// SPDX-License-Identifier: MIT
#include "opts.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

const char rbb_usage[] =
        "usage: rebound-bench [OPTIONS] URL\n"
        "Load generator for echo servers; verifies every echoed byte.\n"
        "URL: tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT, unix:PATH\n"
        "     (unix:@NAME: abstract); udp sends one message per datagram\n"
        "  -c, --connections N     connections (default 1)\n"
        "  -t, --threads N         client threads, one epoll loop each (default 1)\n"
        "      --active N          only N connections send, the rest stay idle\n"
        "  -s, --size BYTES        message size, 1 to 1M; K/M suffixes (default 64)\n"
        "      --depth N           messages in flight per connection (default 1)\n"
        "  -d, --duration TIME     measured time (default 10s; with -n: time limit)\n"
        "      --warmup TIME       unmeasured time before -d (default 0)\n"
        "  -n, --messages N        stop after N messages in total\n"
        "      --rate R            open loop: R msgs/s in total, latency from the\n"
        "                          intended send time (default: closed loop)\n"
        "      --stall-timeout T   fail when a connection makes no progress for T\n"
        "                          (default 5s)\n"
        "      --interval T        print a progress line every T\n"
        "      --server-pid PID    report the CPU time of PID and its children per\n"
        "                          message and per GiB\n"
        "      --cpu-system        report every CPU's busy time (/proc/stat) per\n"
        "                          message and per GiB, beside the server's and\n"
        "                          rebound-bench's own\n"
        "      --crr               each transaction connects, sends one message,\n"
        "                          reads the echo and closes (-c in parallel);\n"
        "                          -n counts transactions\n"
        "      --tcp-info          sample TCP_INFO (rtt, rttvar, retransmits, cwnd)\n"
        "                          per connection at the end and every --interval\n"
        "      --strict            with --rate: fail when the achieved rate is\n"
        "                          more than 5% below it\n"
        "      --json              print the report as JSON\n"
        "      --hgrm FILE         write the latency distribution (HdrHistogram\n"
        "                          text format, microseconds) to FILE\n"
        "      --seed N            seed of the byte streams (default 1)\n"
        "      --expect WHAT       what the server does (tcp:// or unix:): echo (default),\n"
        "                          none (a discard server: send only, count the bytes\n"
        "                          its TCP acknowledged) or chargen (receive only,\n"
        "                          verify RFC 864's pattern); with none and chargen,\n"
        "                          -s is the size of each send or receive (default\n"
        "                          64K) and -n N means N times -s bytes\n"
        "  -h, --help              this text\n"
        "      --version           print the version\n"
        "TIME is seconds, or a number with ms, s, m or h.\n"
        "Exit status: 0 all bytes verified, 1 run failed, 2 bad usage.\n";

enum {
	OPT_ACTIVE = 256,
	OPT_DEPTH,
	OPT_WARMUP,
	OPT_RATE,
	OPT_STALL,
	OPT_INTERVAL,
	OPT_SERVER_PID,
	OPT_CPU_SYSTEM,
	OPT_CRR,
	OPT_TCP_INFO,
	OPT_STRICT,
	OPT_JSON,
	OPT_HGRM,
	OPT_SEED,
	OPT_EXPECT,
	OPT_VERSION,
};

static const struct option long_opts[] = {
        {"connections", required_argument, NULL, 'c'},
        {"threads", required_argument, NULL, 't'},
        {"active", required_argument, NULL, OPT_ACTIVE},
        {"size", required_argument, NULL, 's'},
        {"depth", required_argument, NULL, OPT_DEPTH},
        {"duration", required_argument, NULL, 'd'},
        {"warmup", required_argument, NULL, OPT_WARMUP},
        {"messages", required_argument, NULL, 'n'},
        {"rate", required_argument, NULL, OPT_RATE},
        {"stall-timeout", required_argument, NULL, OPT_STALL},
        {"interval", required_argument, NULL, OPT_INTERVAL},
        {"server-pid", required_argument, NULL, OPT_SERVER_PID},
        {"cpu-system", no_argument, NULL, OPT_CPU_SYSTEM},
        {"crr", no_argument, NULL, OPT_CRR},
        {"tcp-info", no_argument, NULL, OPT_TCP_INFO},
        {"strict", no_argument, NULL, OPT_STRICT},
        {"json", no_argument, NULL, OPT_JSON},
        {"hgrm", required_argument, NULL, OPT_HGRM},
        {"seed", required_argument, NULL, OPT_SEED},
        {"expect", required_argument, NULL, OPT_EXPECT},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0},
};

static const char short_opts[] = ":c:t:s:d:n:h";

__attribute__((format(printf, 3, 4))) static int fail(char *err, size_t errlen, const char *fmt,
                                                      ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
	return -EINVAL;
}

/* Unsigned decimal with an optional suffix scaled by @k (1000 or 1024): k/K, m/M, g/G. */
static int parse_count(const char *s, uint64_t k, uint64_t *out)
{
	unsigned long long v;
	uint64_t mult = 1;
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return -ERANGE;
	if (*end) {
		switch (*end) {
		case 'k':
		case 'K':
			mult = k;
			break;
		case 'm':
		case 'M':
			mult = k * k;
			break;
		case 'g':
		case 'G':
			mult = k * k * k;
			break;
		default:
			return -EINVAL;
		}
		end++;
		/* Accept KiB/MiB/GiB spelled out for sizes. */
		if (k == 1024 && (!strcmp(end, "iB") || !strcmp(end, "B")))
			end += strlen(end);
		if (*end)
			return -EINVAL;
	}
	if (v > UINT64_MAX / mult)
		return -ERANGE;
	*out = v * mult;
	return 0;
}

/* Seconds as a decimal number with an optional unit: ms, s, m, h. */
static int parse_time(const char *s, double *out)
{
	double v, mult = 1;
	char *end;

	if ((*s < '0' || *s > '9') && *s != '.')
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || !isfinite(v))
		return -ERANGE;
	if (!strcmp(end, "ms"))
		mult = 0.001;
	else if (!strcmp(end, "us"))
		mult = 0.000001;
	else if (!strcmp(end, "s") || !*end)
		mult = 1;
	else if (!strcmp(end, "m"))
		mult = 60;
	else if (!strcmp(end, "h"))
		mult = 3600;
	else
		return -EINVAL;
	*out = v * mult;
	return 0;
}

static int opt_uint(const char *name, const char *arg, uint64_t k, uint64_t lo, uint64_t hi,
                    uint64_t *out, char *err, size_t errlen)
{
	uint64_t v;

	if (parse_count(arg, k, &v) < 0 || v < lo || v > hi)
		return fail(err, errlen, "invalid %s '%s': expected an integer from %llu to %llu",
		            name, arg, (unsigned long long)lo, (unsigned long long)hi);
	*out = v;
	return 0;
}

static int opt_time(const char *name, const char *arg, double lo, double *out, char *err,
                    size_t errlen)
{
	double v;

	if (parse_time(arg, &v) < 0 || v < lo || v > RBB_MAX_SECONDS)
		return fail(err, errlen,
		            "invalid %s '%s': expected a time such as 10, 1.5s or 500ms%s", name,
		            arg, lo > 0 ? ", above 0" : "");
	if (lo > 0 && v <= 0)
		return fail(err, errlen,
		            "invalid %s '%s': expected a time such as 10, 1.5s or 500ms, above 0",
		            name, arg);
	*out = v;
	return 0;
}

static const char target_forms[] =
        "expected tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT or unix:PATH";

static int parse_inet(struct rbb_target *t, const char *url, const char *rest, char *err,
                      size_t errlen)
{
	char host[RBB_URL_MAX];
	const char *port, *close;
	struct addrinfo hints = {0}, *res;
	size_t hlen;
	int rc;

	if (*rest == '[') {
		close = strchr(rest, ']');
		if (!close || close[1] != ':')
			return fail(err, errlen, "invalid target '%s': %s", url, target_forms);
		hlen = (size_t)(close - rest - 1);
		memcpy(host, rest + 1, hlen < sizeof(host) ? hlen : 0);
		port = close + 2;
		hints.ai_family = AF_INET6;
	} else {
		port = strrchr(rest, ':');
		if (!port)
			return fail(err, errlen, "invalid target '%s': %s", url, target_forms);
		hlen = (size_t)(port - rest);
		if (memchr(rest, ':', hlen))
			return fail(err, errlen,
			            "invalid target '%s': put an IPv6 address in brackets", url);
		memcpy(host, rest, hlen < sizeof(host) ? hlen : 0);
		port++;
		hints.ai_family = AF_UNSPEC;
	}
	if (!hlen || hlen >= sizeof(host))
		return fail(err, errlen, "invalid target '%s': %s", url, target_forms);
	host[hlen] = '\0';
	if (!*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
	    atoi(port) < 1 || atoi(port) > 65535)
		return fail(err, errlen, "invalid target '%s': bad port '%s'", url, port);
	hints.ai_socktype = t->proto == RBB_PROTO_UDP ? SOCK_DGRAM : SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	rc = getaddrinfo(host, port, &hints, &res);
	if (rc)
		return fail(err, errlen, "invalid target '%s': cannot resolve '%s': %s", url, host,
		            gai_strerror(rc));
	memcpy(&t->addr, res->ai_addr, res->ai_addrlen);
	t->addrlen = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

int rbb_target_parse(struct rbb_target *t, const char *url, char *err, size_t errlen)
{
	memset(t, 0, sizeof(*t));
	if (!strncmp(url, "tcp://", 6)) {
		t->proto = RBB_PROTO_TCP;
		return parse_inet(t, url, url + 6, err, errlen);
	}
	if (!strncmp(url, "udp://", 6)) {
		t->proto = RBB_PROTO_UDP;
		return parse_inet(t, url, url + 6, err, errlen);
	}
	if (!strncmp(url, "unix:", 5)) {
		struct sockaddr_un *sun = (struct sockaddr_un *)&t->addr;
		const char *path = url + 5;
		size_t len = strlen(path);

		t->proto = RBB_PROTO_UNIX;
		if (!len || len >= sizeof(sun->sun_path))
			return fail(err, errlen,
			            "invalid target '%s': socket path must be 1 to %zu bytes", url,
			            sizeof(sun->sun_path) - 1);
		sun->sun_family = AF_UNIX;
		memcpy(sun->sun_path, path, len);
		/* unix:@NAME is Linux's abstract namespace: a leading NUL, no terminator. */
		if (path[0] == '@') {
			sun->sun_path[0] = '\0';
			t->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
		} else {
			t->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
		}
		return 0;
	}
	return fail(err, errlen, "invalid target '%s': %s", url, target_forms);
}

const char *rbb_expect_name(enum rbb_expect e)
{
	switch (e) {
	case RBB_EXPECT_NONE:
		return "none";
	case RBB_EXPECT_CHARGEN:
		return "chargen";
	case RBB_EXPECT_ECHO:
		break;
	}
	return "echo";
}

static void set_defaults(struct rbb_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->connections = 1;
	o->threads = 1;
	o->size = 64;
	o->depth = 1;
	o->duration = 10;
	o->stall_timeout = 5;
	o->seed = 1;
}

/* The option as the user spelled it, for error messages. */
static const char *opt_name(int c)
{
	for (const struct option *lo = long_opts; lo->name; lo++)
		if (lo->val == c) {
			static char buf[32];

			snprintf(buf, sizeof(buf), "--%s", lo->name);
			return buf;
		}
	return "?";
}

int rbb_opts_parse(struct rbb_opts *o, int argc, char **argv, char *err, size_t errlen)
{
	bool have_duration = false, have_threads = false, have_active = false;
	bool have_size = false, have_depth = false;
	uint64_t v;
	int c, rc;

	set_defaults(o);
	/* 0 makes glibc's getopt start over, so tests can parse repeatedly. */
	optind = 0;
	opterr = 0;
	while ((c = getopt_long(argc, argv, short_opts, long_opts, NULL)) != -1) {
		const char *name = opt_name(c);

		rc = 0;
		switch (c) {
		case 'c':
			rc = opt_uint(name, optarg, 1, 1, RBB_MAX_CONNECTIONS, &v, err, errlen);
			o->connections = (unsigned)v;
			break;
		case 't':
			rc = opt_uint(name, optarg, 1, 1, RBB_MAX_THREADS, &v, err, errlen);
			o->threads = (unsigned)v;
			have_threads = true;
			break;
		case OPT_ACTIVE:
			rc = opt_uint(name, optarg, 1, 0, RBB_MAX_CONNECTIONS, &v, err, errlen);
			o->active = (unsigned)v;
			have_active = true;
			break;
		case 's':
			rc = opt_uint(name, optarg, 1024, 1, RBB_MAX_SIZE, &v, err, errlen);
			o->size = (size_t)v;
			have_size = true;
			break;
		case OPT_DEPTH:
			rc = opt_uint(name, optarg, 1, 1, RBB_MAX_DEPTH, &v, err, errlen);
			o->depth = (unsigned)v;
			have_depth = true;
			break;
		case 'd':
			rc = opt_time(name, optarg, 1e-9, &o->duration, err, errlen);
			have_duration = true;
			break;
		case OPT_WARMUP:
			rc = opt_time(name, optarg, 0, &o->warmup, err, errlen);
			break;
		case 'n':
			rc = opt_uint(name, optarg, 1000, 1, UINT64_MAX / 2, &o->messages, err,
			              errlen);
			break;
		case OPT_RATE: {
			char *end;

			errno = 0;
			o->rate = strtod(optarg, &end);
			if (errno || *end || end == optarg || !isfinite(o->rate) || o->rate <= 0 ||
			    o->rate > 1e9)
				rc = fail(err, errlen,
				          "invalid %s '%s': expected messages per second, above 0",
				          name, optarg);
			break;
		}
		case OPT_STALL:
			rc = opt_time(name, optarg, 1e-9, &o->stall_timeout, err, errlen);
			break;
		case OPT_INTERVAL:
			rc = opt_time(name, optarg, 1e-9, &o->interval, err, errlen);
			break;
		case OPT_SERVER_PID:
			rc = opt_uint(name, optarg, 1, 1, 4194304, &v, err, errlen);
			o->server_pid = (pid_t)v;
			break;
		case OPT_CPU_SYSTEM:
			o->cpu_system = true;
			break;
		case OPT_CRR:
			o->crr = true;
			break;
		case OPT_TCP_INFO:
			o->tcp_info = true;
			break;
		case OPT_STRICT:
			o->strict = true;
			break;
		case OPT_JSON:
			o->json = true;
			break;
		case OPT_HGRM:
			if (!*optarg)
				rc = fail(err, errlen, "invalid --hgrm '': expected a file name");
			o->hgrm = optarg;
			break;
		case OPT_SEED:
			rc = opt_uint(name, optarg, 1, 0, UINT64_MAX, &o->seed, err, errlen);
			break;
		case OPT_EXPECT:
			if (!strcmp(optarg, "echo"))
				o->expect = RBB_EXPECT_ECHO;
			else if (!strcmp(optarg, "none"))
				o->expect = RBB_EXPECT_NONE;
			else if (!strcmp(optarg, "chargen"))
				o->expect = RBB_EXPECT_CHARGEN;
			else
				rc = fail(err, errlen,
				          "invalid --expect '%s': expected echo, none or chargen",
				          optarg);
			break;
		case 'h':
			o->help = true;
			return 0;
		case OPT_VERSION:
			o->version = true;
			return 0;
		case ':':
			if (optopt)
				return fail(err, errlen, "option '%s' needs a value",
				            opt_name(optopt));
			return fail(err, errlen, "option '%s' needs a value", argv[optind - 1]);
		default:
			if (optopt)
				return fail(err, errlen, "unknown option '-%c'", optopt);
			return fail(err, errlen, "unknown option '%s'", argv[optind - 1]);
		}
		if (rc < 0)
			return rc;
	}
	if (optind >= argc)
		return fail(err, errlen, "missing target URL (%s)", target_forms + 9);
	if (optind + 1 < argc)
		return fail(err, errlen, "unexpected argument '%s'", argv[optind + 1]);
	o->url = argv[optind];
	rc = rbb_target_parse(&o->target, o->url, err, errlen);
	if (rc < 0)
		return rc;

	if (!have_active)
		o->active = o->connections;
	if (o->active > o->connections)
		return fail(err, errlen, "invalid --active '%u': more than --connections (%u)",
		            o->active, o->connections);
	if (!have_threads || o->threads > o->connections)
		o->threads = have_threads ? o->connections : 1;
	/* -n alone still ends in bounded time: a generous default limit. */
	if (o->messages && !have_duration)
		o->duration = 60;
	if (o->messages && o->warmup > 0)
		return fail(err, errlen, "--warmup works with -d only, not with -n");
	if (o->crr && o->target.proto == RBB_PROTO_UDP)
		return fail(err, errlen,
		            "invalid target '%s': --crr needs tcp:// or unix:", o->url);
	if (o->crr && (have_active || o->depth > 1))
		return fail(err, errlen, "--crr takes neither --active nor --depth");
	if (o->tcp_info && o->target.proto != RBB_PROTO_TCP)
		return fail(err, errlen, "invalid target '%s': --tcp-info needs tcp://", o->url);
	if (o->strict && o->rate <= 0)
		return fail(err, errlen, "--strict works with --rate only");
	if (o->expect != RBB_EXPECT_ECHO) {
		const char *e = rbb_expect_name(o->expect);

		if (o->target.proto == RBB_PROTO_UDP)
			return fail(err, errlen,
			            "invalid target '%s': --expect %s needs tcp:// or unix:",
			            o->url, e);
		if (o->crr || have_active || have_depth || o->rate > 0)
			return fail(err, errlen,
			            "--expect %s takes none of --crr, --active, --depth, --rate",
			            e);
		/* One-way streams: -s is the size of each send or receive call. */
		if (!have_size)
			o->size = 64 * 1024;
	}
	if (o->target.proto == RBB_PROTO_UDP && o->size > RBB_MAX_DATAGRAM)
		return fail(err, errlen,
		            "invalid --size '%zu': a udp datagram carries at most %u bytes",
		            o->size, RBB_MAX_DATAGRAM);
	return 0;
}
