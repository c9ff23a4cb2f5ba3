/* SPDX-License-Identifier: MIT */
/*
 * The metrics endpoint (--metrics URL): a small HTTP/1.1 server in a thread
 * of its own, off the data path. It knows the server only through the
 * public API: rb_server_stats() for a snapshot of the counters the workers
 * publish with relaxed stores, rb_server_stats_json() for /stats. Every
 * counter of RB_STATS appears in /metrics with its doc as # HELP, without a
 * line here. GET /impair tells the impairments in force; POST /impair
 * replaces them for new sessions (rb_impair_parse on the body, then
 * rb_server_set_impair, the calls SIGHUP's --impair-file makes).
 *
 * One poll loop serves a few clients at once, each bounded in size (the
 * request head) and in time (one deadline from accept to close), so a slow
 * or garbage client holds one slot for a while, never the thread. A POST
 * body (Content-Length only, at most METRICS_BODY_MAX) is read the same way,
 * as it comes, within the same deadline. A
 * response ends with Connection: close and a lingering close (FIN, then
 * read and drop until the client's FIN), so unread request bytes cannot
 * turn the close into an RST that destroys the response in flight.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define METRICS_CLIENTS     16    /* served at once; the oldest makes room */
#define METRICS_REQUEST_MAX 8192  /* request line and headers */
#define METRICS_BODY_MAX    16384 /* POST /impair: the flags, as in an --impair-file */
#define METRICS_TIMEOUT_MS  5000  /* from accept to close, whatever the client does */
#define METRICS_BACKOFF_MS  100   /* accept failed for want of descriptors or memory */
#define METRICS_BACKLOG     64
#define METRICS_UNIX_MODE   0660u

#define URL_HELP "expected tcp://HOST:PORT, tcp://[IPV6]:PORT or unix:PATH"

enum route {
	ROUTE_NONE = 0,
	ROUTE_METRICS,
	ROUTE_STATS,
	ROUTE_IMPAIR,
};

struct request {
	int status;           /* 0: the head is not complete yet; else the status to answer */
	bool head;            /* HEAD: the headers only */
	bool post;            /* POST (to /impair): a body of `length` bytes follows the head */
	bool expect_continue; /* Expect: 100-continue */
	enum route route;
	size_t head_len; /* the head's bytes, its empty line included */
	size_t length;   /* Content-Length */
	char text[1536]; /* the body to answer with, if not the status's reason */
};

enum client_state {
	CLIENT_FREE = 0,
	CLIENT_READ,   /* reading the request head */
	CLIENT_BODY,   /* reading a POST body of a known length */
	CLIENT_WRITE,  /* sending the response */
	CLIENT_LINGER, /* response sent and FIN too: dropping input until EOF */
};

struct client {
	int fd;
	enum client_state state;
	uint64_t order;    /* accept order: the oldest makes room for a new one */
	uint64_t deadline; /* ms: closed then, whatever its state */
	char *out;         /* the response */
	size_t out_len, out_off;
	size_t in_len;
	char in[METRICS_REQUEST_MAX];
	struct request rq; /* the request, once its head is complete */
	char *body;        /* CLIENT_BODY: rq.length bytes (and a NUL) */
	size_t body_len;
};

struct rb_metrics {
	struct rb_server *srv;
	struct rb_addr addr;
	int lfd;
	int wake_fd; /* eventfd: rb_metrics_stop */
	pthread_t thread;
	uint64_t backoff_until;
	uint64_t accepts; /* clients accepted so far, for their order */
	struct client clients[METRICS_CLIENTS];
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---- a growing text buffer ---- */

struct text {
	char *p;
	size_t len, cap;
	bool failed; /* out of memory: the text is incomplete */
};

static bool text_reserve(struct text *t, size_t more)
{
	size_t cap = t->cap ? t->cap : 4096;
	char *p;

	if (t->failed)
		return false;
	while (cap - t->len <= more)
		cap *= 2;
	if (cap == t->cap)
		return true;
	p = realloc(t->p, cap);
	if (!p) {
		t->failed = true;
		return false;
	}
	t->p = p;
	t->cap = cap;
	return true;
}

__attribute__((format(printf, 2, 3))) static void text_printf(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!text_reserve(t, 256))
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n < 0) {
		t->failed = true;
		return;
	}
	if ((size_t)n >= t->cap - t->len) {
		if (!text_reserve(t, (size_t)n))
			return;
		va_start(ap, fmt);
		vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
		va_end(ap);
	}
	t->len += (size_t)n;
}

static void text_append(struct text *t, const char *s, size_t len)
{
	if (!text_reserve(t, len))
		return;
	memcpy(t->p + t->len, s, len);
	t->len += len;
	t->p[t->len] = '\0';
}

/* ---- the exposition format (Prometheus text format 0.0.4) ---- */

/* The counters, from the one list: name, where, how summed, doc. */
#define METRICS_MAX_SUM false
#define METRICS_MAX_MAX true
static const struct field {
	const char *name;
	size_t off;
	bool max; /* the largest of the workers' (a peak): a gauge */
	const char *doc;
} fields[] = {
#define FIELD(name, how, doc) {#name, offsetof(struct rb_stats, name), METRICS_MAX_##how, doc},
        RB_STATS(FIELD)
#undef FIELD
};

/* Values that go up and down; every other field only grows: a counter. */
static const char *const gauges[] = {"active", "buffered", "chunks_live", "chunks_cached"};

/*
 * Histograms, from bucket counters that each count one range [lo, hi): a
 * cumulative bucket le=X is the sum of the ranges up to X. The byte ranges
 * are of whole bytes, so "under 1 KiB" is exactly le=1023; the time ranges
 * are continuous, where < and <= differ by nothing measurable. _sum is a
 * counter of its own that adds up every observation (microseconds, shown
 * in seconds, or bytes), so it is exact.
 */
#define HIST_BUCKETS 8
static const struct histogram {
	const char *name;
	const char *help;
	size_t sum_off; /* the observations added up */
	bool sum_us;    /* ... in microseconds, shown in seconds */
	struct {
		size_t off;
		const char *le;
	} b[HIST_BUCKETS];
} histograms[] = {
        {"rebound_session_duration_seconds",
         "how long sessions lasted, open to close",
         offsetof(struct rb_stats, duration_us),
         true,
         {{offsetof(struct rb_stats, duration_under_1ms), "0.001"},
          {offsetof(struct rb_stats, duration_under_10ms), "0.01"},
          {offsetof(struct rb_stats, duration_under_100ms), "0.1"},
          {offsetof(struct rb_stats, duration_under_1s), "1"},
          {offsetof(struct rb_stats, duration_under_10s), "10"},
          {offsetof(struct rb_stats, duration_under_100s), "100"},
          {offsetof(struct rb_stats, duration_over_100s), "+Inf"}}},
        {"rebound_session_bytes",
         "bytes a session moved, in + out",
         offsetof(struct rb_stats, session_bytes),
         false,
         {{offsetof(struct rb_stats, session_bytes_under_1k), "1023"},
          {offsetof(struct rb_stats, session_bytes_under_64k), "65535"},
          {offsetof(struct rb_stats, session_bytes_under_1m), "1048575"},
          {offsetof(struct rb_stats, session_bytes_under_64m), "67108863"},
          {offsetof(struct rb_stats, session_bytes_over_64m), "+Inf"}}},
        {"rebound_upstream_connect_seconds",
         "relay: how long upstream connects took",
         offsetof(struct rb_stats, connect_us),
         true,
         {{offsetof(struct rb_stats, connect_under_1ms), "0.001"},
          {offsetof(struct rb_stats, connect_under_10ms), "0.01"},
          {offsetof(struct rb_stats, connect_under_100ms), "0.1"},
          {offsetof(struct rb_stats, connect_under_1s), "1"},
          {offsetof(struct rb_stats, connect_over_1s), "+Inf"}}},
};

#define N_ELEMS(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t value_at(const struct rb_stats *st, size_t off)
{
	uint64_t v;

	memcpy(&v, (const char *)st + off, sizeof(v));
	return v;
}

/* The histogram a field is part of, and which bucket (HIST_BUCKETS: its
 * sum); NULL if none. */
static const struct histogram *histogram_of(size_t off, size_t *bucket)
{
	for (size_t h = 0; h < N_ELEMS(histograms); h++) {
		if (histograms[h].sum_off == off) {
			*bucket = HIST_BUCKETS;
			return &histograms[h];
		}
		for (size_t b = 0; b < HIST_BUCKETS && histograms[h].b[b].le; b++)
			if (histograms[h].b[b].off == off) {
				*bucket = b;
				return &histograms[h];
			}
	}
	return NULL;
}

static bool is_gauge(const struct field *f)
{
	if (f->max || strncmp(f->name, "peak_", 5) == 0)
		return true;
	for (size_t i = 0; i < N_ELEMS(gauges); i++)
		if (strcmp(f->name, gauges[i]) == 0)
			return true;
	return false;
}

/* # HELP text: a backslash and a newline are the two characters escaped. */
static void help_line(struct text *t, const char *name, const char *doc)
{
	text_printf(t, "# HELP %s ", name);
	for (const char *p = doc; *p; p++) {
		if (*p == '\\')
			text_append(t, "\\\\", 2);
		else if (*p == '\n')
			text_append(t, "\\n", 2);
		else
			text_append(t, p, 1);
	}
	text_append(t, "\n", 1);
}

static void histogram_text(struct text *t, const struct histogram *h, const struct rb_stats *st)
{
	uint64_t sum = 0;

	help_line(t, h->name, h->help);
	text_printf(t, "# TYPE %s histogram\n", h->name);
	for (size_t b = 0; b < HIST_BUCKETS && h->b[b].le; b++) {
		sum += value_at(st, h->b[b].off);
		text_printf(t, "%s_bucket{le=\"%s\"} %" PRIu64 "\n", h->name, h->b[b].le, sum);
	}
	uint64_t total = value_at(st, h->sum_off);
	if (h->sum_us)
		text_printf(t, "%s_sum %" PRIu64 ".%06" PRIu64 "\n", h->name, total / 1000000,
		            total % 1000000);
	else
		text_printf(t, "%s_sum %" PRIu64 "\n", h->name, total);
	text_printf(t, "%s_count %" PRIu64 "\n", h->name, sum);
}

static void metrics_text(struct text *t, const struct rb_server *srv)
{
	struct rb_stats st;

	rb_server_stats(srv, &st);
	text_printf(t,
	            "# HELP rebound_info the running rebound: its version and engine\n"
	            "# TYPE rebound_info gauge\n"
	            "rebound_info{version=\"%s\",engine=\"%s\"} 1\n",
	            RB_VERSION, rb_engine_name(rb_server_engine(srv)));
	for (size_t i = 0; i < N_ELEMS(fields); i++) {
		const struct field *f = &fields[i];
		size_t bucket;
		const struct histogram *h = histogram_of(f->off, &bucket);
		uint64_t v = value_at(&st, f->off);
		char name[96];

		if (h) {
			/* The whole histogram where its first bucket is listed. */
			if (bucket == 0)
				histogram_text(t, h, &st);
			continue;
		}
		if (is_gauge(f)) {
			snprintf(name, sizeof(name), "rebound_%s", f->name);
			help_line(t, name, f->doc);
			text_printf(t, "# TYPE %s gauge\n%s %" PRIu64 "\n", name, name, v);
		} else {
			snprintf(name, sizeof(name), "rebound_%s_total", f->name);
			help_line(t, name, f->doc);
			text_printf(t, "# TYPE %s counter\n%s %" PRIu64 "\n", name, name, v);
		}
	}
}

/* ---- HTTP ---- */

static const char *reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 400:
		return "Bad Request";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 408:
		return "Request Timeout";
	case 411:
		return "Length Required";
	case 413:
		return "Content Too Large";
	case 431:
		return "Request Header Fields Too Large";
	case 505:
		return "HTTP Version Not Supported";
	default:
		return "Internal Server Error";
	}
}

/* RFC 9110 tchar: what a method or a field name is made of. */
static bool is_tchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
	       (c && strchr("!#$%&'*+-.^_`|~", c));
}

static size_t token_len(const char *s, size_t len)
{
	size_t n = 0;

	while (n < len && is_tchar((unsigned char)s[n]))
		n++;
	return n;
}

/* The next line of buf from *pos: its length without CRLF (or a bare LF,
 * which RFC 9112 lets a server accept), or -1 if it is not complete. */
static ssize_t next_line(const char *buf, size_t len, size_t *pos, const char **line)
{
	const char *nl = memchr(buf + *pos, '\n', len - *pos);
	size_t n;

	if (!nl)
		return -1;
	*line = buf + *pos;
	n = (size_t)(nl - *line);
	*pos += n + 1;
	if (n && (*line)[n - 1] == '\r')
		n--;
	return (ssize_t)n;
}

static enum route route_of(const char *target, size_t len)
{
	size_t path_len;

	/* absolute-form (a proxy's request) names the path after the authority. */
	if (len > 7 && (strncasecmp(target, "http://", 7) == 0 ||
	                (len > 8 && strncasecmp(target, "https://", 8) == 0))) {
		const char *a = memchr(target, '/', len);
		const char *slash = memchr(a + 2, '/', len - (size_t)(a + 2 - target));
		if (!slash)
			return ROUTE_NONE;
		len -= (size_t)(slash - target);
		target = slash;
	}
	path_len = 0;
	while (path_len < len && target[path_len] != '?')
		path_len++;
	if (path_len == 8 && memcmp(target, "/metrics", 8) == 0)
		return ROUTE_METRICS;
	if (path_len == 6 && memcmp(target, "/stats", 6) == 0)
		return ROUTE_STATS;
	if (path_len == 7 && memcmp(target, "/impair", 7) == 0)
		return ROUTE_IMPAIR;
	return ROUTE_NONE;
}

/* POST /impair: a body of a known length, and a small one. The body is read
 * (status 200 so far) only if both hold; chunked transfer coding is not read. */
static void post_length(struct request *rq, bool chunked, bool has_length, size_t length)
{
	if (chunked || !has_length) {
		rq->status = 411;
		snprintf(rq->text, sizeof(rq->text), "POST /impair needs a Content-Length%s\n",
		         chunked ? " (chunked bodies are not read)" : "");
	} else if (length > METRICS_BODY_MAX) {
		rq->status = 413;
		if (length == SIZE_MAX)
			snprintf(rq->text, sizeof(rq->text),
			         "POST /impair takes a body of at most %d bytes\n",
			         METRICS_BODY_MAX);
		else
			snprintf(rq->text, sizeof(rq->text),
			         "POST /impair takes a body of at most %d bytes, not %zu\n",
			         METRICS_BODY_MAX, length);
	} else {
		rq->length = length;
		rq->status = 200;
	}
}

/*
 * Parse the request head in buf, from its start, as far as it has come: a
 * complete line that breaks the grammar is answered at once (400), so
 * garbage does not wait for a blank line that never comes.
 */
/* A field's value without its optional whitespace around it. */
static const char *field_value(const char *line, size_t n, size_t name_len, size_t *len)
{
	const char *v = line + name_len + 1, *end = line + n;

	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == ' ' || end[-1] == '\t'))
		end--;
	*len = (size_t)(end - v);
	return v;
}

/* Content-Length = 1*DIGIT; past any limit of ours is as good as SIZE_MAX. */
static bool parse_length(const char *v, size_t len, size_t *out)
{
	size_t x = 0;

	if (len == 0)
		return false;
	for (size_t i = 0; i < len; i++) {
		if (v[i] < '0' || v[i] > '9')
			return false;
		x = x > SIZE_MAX / 10 - 1 ? SIZE_MAX : x * 10 + (size_t)(v[i] - '0');
	}
	*out = x;
	return true;
}

static void parse_request(const char *buf, size_t len, struct request *rq)
{
	const char *line, *method, *target;
	size_t pos = 0, method_len, target_len, hosts = 0, lengths = 0, length = 0;
	bool chunked = false;
	ssize_t n;
	int minor;

	memset(rq, 0, sizeof(*rq));
	/* A server should ignore empty lines before the request line. */
	while ((n = next_line(buf, len, &pos, &line)) == 0)
		;
	if (n < 0)
		goto incomplete;
	/* request-line = method SP request-target SP HTTP-version */
	method = line;
	method_len = token_len(line, (size_t)n);
	if (method_len == 0 || method_len >= (size_t)n || line[method_len] != ' ')
		goto bad;
	target = line + method_len + 1;
	target_len = 0;
	while (target + target_len < line + n && target[target_len] > ' ' &&
	       target[target_len] < 0x7f)
		target_len++;
	if (target_len == 0 || target + target_len + 9 != line + n || target[target_len] != ' ')
		goto bad;
	if (memcmp(target + target_len + 1, "HTTP/", 5) != 0)
		goto bad;
	{
		const char *v = target + target_len + 6;
		if (v[0] < '0' || v[0] > '9' || v[1] != '.' || v[2] < '0' || v[2] > '9')
			goto bad;
		if (v[0] != '1') {
			rq->status = 505;
			return;
		}
		minor = v[2] - '0';
	}
	if (target[0] != '/' && strncasecmp(target, "http://", 7) != 0 &&
	    strncasecmp(target, "https://", 8) != 0)
		goto bad;
	/* field-line = field-name ":" OWS field-value OWS, up to an empty line */
	for (;;) {
		size_t name_len;
		n = next_line(buf, len, &pos, &line);
		if (n < 0)
			goto incomplete;
		if (n == 0)
			break;
		/* No obsolete line folding; no space before the colon. */
		name_len = token_len(line, (size_t)n);
		if (name_len == 0 || name_len == (size_t)n || line[name_len] != ':')
			goto bad;
		for (size_t i = name_len + 1; i < (size_t)n; i++) {
			unsigned char c = (unsigned char)line[i];
			if ((c < ' ' && c != '\t') || c == 0x7f)
				goto bad;
		}
		if (name_len == 4 && strncasecmp(line, "host", 4) == 0)
			hosts++;
		if (name_len == 14 && strncasecmp(line, "content-length", 14) == 0) {
			size_t vl, x;
			const char *v = field_value(line, (size_t)n, name_len, &vl);
			/* Repeated, it must say the same each time. */
			if (!parse_length(v, vl, &x) || (lengths && x != length))
				goto bad;
			length = x;
			lengths++;
		}
		if (name_len == 17 && strncasecmp(line, "transfer-encoding", 17) == 0)
			chunked = true;
		if (name_len == 6 && strncasecmp(line, "expect", 6) == 0) {
			size_t vl;
			const char *v = field_value(line, (size_t)n, name_len, &vl);
			rq->expect_continue = vl == 12 && strncasecmp(v, "100-continue", 12) == 0;
		}
	}
	/* HTTP/1.1 requires exactly one Host; HTTP/1.0 may have none. */
	if (hosts > 1 || (minor >= 1 && hosts == 0))
		goto bad;
	rq->head_len = pos;
	rq->route = route_of(target, target_len);
	rq->head = method_len == 4 && memcmp(method, "HEAD", 4) == 0;
	rq->post = method_len == 4 && memcmp(method, "POST", 4) == 0;
	if (rq->route == ROUTE_NONE)
		rq->status = 404;
	else if (rq->post && rq->route == ROUTE_IMPAIR)
		post_length(rq, chunked, lengths > 0, length);
	else if (!rq->head && !(method_len == 3 && memcmp(method, "GET", 3) == 0))
		rq->status = 405;
	else
		rq->status = 200;
	return;
incomplete:
	/* A line may still be coming; a head that fills the buffer will not end. */
	if (len >= METRICS_REQUEST_MAX)
		rq->status = 431;
	return;
bad:
	rq->status = 400;
}

/* RFC 9110 IMF-fixdate, without the locale's day and month names. */
static void http_date(char *buf, size_t len)
{
	static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
	static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	                                   "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
	time_t now = time(NULL);
	struct tm tm;

	gmtime_r(&now, &tm);
	snprintf(buf, len, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7], tm.tm_mday,
	         months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* ---- /impair ---- */

/* The impairments in force as the start-up line tells them. */
static void impair_summary(const struct rb_server *srv, char *buf, size_t len)
{
	struct rb_impair imp;
	char d[1024];

	rb_server_impair(srv, &imp);
	rb_impair_describe(&imp, d, sizeof(d));
	snprintf(buf, len, "%s (replay with --seed %" PRIu64 ")", d, imp.seed);
}

/* POST /impair with its whole body: the new set for new sessions, or a
 * 400 with the one-line reason and nothing changed. */
static void impair_post(struct rb_metrics *m, struct request *rq, const char *body, size_t len)
{
	const char *nul = memchr(body, '\0', len);
	struct rb_impair imp;
	char err[512], now[1100];
	bool ok = false;

	if (nul) {
		snprintf(err, sizeof(err), "the body has a NUL byte at offset %zu",
		         (size_t)(nul - body));
	} else if (rb_impair_parse(&imp, body, err, sizeof(err)) < 0) {
		/* One line is told as the command line tells it; more keep the
		 * line number, as --impair-file's do. */
		size_t end = len;
		while (end && strchr(" \t\r\n", body[end - 1]))
			end--;
		if (!memchr(body, '\n', end) && strncmp(err, "line 1: ", 8) == 0)
			memmove(err, err + 8, strlen(err + 8) + 1);
	} else {
		ok = rb_server_set_impair(m->srv, &imp, err, sizeof(err)) == 0;
	}
	if (!ok) {
		rb__log(RB_LOG_WARNING, "POST /impair refused, nothing changed: %s", err);
		rq->status = 400;
		snprintf(rq->text, sizeof(rq->text), "%s\n", err);
		return;
	}
	impair_summary(m->srv, now, sizeof(now));
	rb__log(RB_LOG_INFO, "impairments (POST /impair, new sessions): %s", now);
	rq->status = 200;
	snprintf(rq->text, sizeof(rq->text),
	         "impairments for new sessions (open ones keep theirs): %s\n", now);
}

/* The whole response to rq, in t. */
static void respond(const struct rb_metrics *m, const struct request *rq, struct text *t)
{
	struct text body = {0};
	const char *type = "text/plain; charset=utf-8";
	char date[64];
	int status = rq->status;

	if (rq->text[0]) {
		text_printf(&body, "%s", rq->text);
	} else if (status == 200 && rq->route == ROUTE_IMPAIR) {
		char now[1100];
		impair_summary(m->srv, now, sizeof(now));
		text_printf(&body, "impairments: %s\n", now);
	} else if (status == 200 && rq->route == ROUTE_METRICS) {
		metrics_text(&body, m->srv);
		type = "text/plain; version=0.0.4; charset=utf-8";
	} else if (status == 200 && rq->route == ROUTE_STATS) {
		char json[16384];
		int n = rb_server_stats_json(m->srv, json, sizeof(json));
		text_append(&body, json, (size_t)n);
		text_append(&body, "\n", 1);
		type = "application/json";
	} else {
		text_printf(&body, "%d %s\n", status, reason(status));
	}
	if (body.failed) {
		free(body.p);
		body = (struct text){0};
		status = 500;
		text_printf(&body, "%d %s\n", status, reason(status));
	}
	http_date(date, sizeof(date));
	text_printf(t,
	            "HTTP/1.1 %d %s\r\n"
	            "Date: %s\r\n"
	            "Server: rebound/%s\r\n"
	            "Content-Type: %s\r\n"
	            "Content-Length: %zu\r\n"
	            "%s"
	            "Connection: close\r\n"
	            "\r\n",
	            status, reason(status), date, RB_VERSION, type, body.len,
	            status != 405               ? ""
	            : rq->route == ROUTE_IMPAIR ? "Allow: GET, HEAD, POST\r\n"
	                                        : "Allow: GET, HEAD\r\n");
	if (!rq->head && body.len)
		text_append(t, body.p, body.len);
	free(body.p);
}

/* ---- clients ---- */

static void client_close(struct client *c)
{
	close(c->fd);
	free(c->out);
	c->out = NULL;
	free(c->body);
	c->body = NULL;
	c->fd = -1;
	c->state = CLIENT_FREE;
}

static void client_linger(struct client *c)
{
	char drop[4096];

	for (;;) {
		ssize_t r = recv(c->fd, drop, sizeof(drop), 0);
		if (r > 0)
			continue;
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		client_close(c); /* EOF, or an error: either way, done */
		return;
	}
}

static void client_write(struct client *c)
{
	while (c->out_off < c->out_len) {
		ssize_t r = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && errno == EAGAIN)
			return;
		if (r < 0) {
			client_close(c);
			return;
		}
		c->out_off += (size_t)r;
	}
	free(c->out);
	c->out = NULL;
	shutdown(c->fd, SHUT_WR);
	c->state = CLIENT_LINGER;
	client_linger(c);
}

static void client_answer(struct rb_metrics *m, struct client *c)
{
	struct text t = {0};

	respond(m, &c->rq, &t);
	if (t.failed) {
		free(t.p);
		client_close(c);
		return;
	}
	c->out = t.p;
	c->out_len = t.len;
	c->out_off = 0;
	c->state = CLIENT_WRITE;
	client_write(c);
}

/* The rest of a POST body, as it comes; then the answer. */
static void client_read_body(struct rb_metrics *m, struct client *c)
{
	struct request *rq = &c->rq;

	while (c->body_len < rq->length) {
		ssize_t r = recv(c->fd, c->body + c->body_len, rq->length - c->body_len, 0);
		if (r > 0) {
			c->body_len += (size_t)r;
			continue;
		}
		if (r == 0) {
			rq->status = 400;
			snprintf(rq->text, sizeof(rq->text),
			         "the body ended after %zu of its %zu bytes (Content-Length); "
			         "nothing "
			         "changed\n",
			         c->body_len, rq->length);
			client_answer(m, c);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			client_close(c);
		return;
	}
	c->body[c->body_len] = '\0';
	impair_post(m, rq, c->body, c->body_len);
	free(c->body);
	c->body = NULL;
	client_answer(m, c);
}

/* The head of a POST is in: what came with it starts the body. */
static void client_start_body(struct rb_metrics *m, struct client *c)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	struct request *rq = &c->rq;
	size_t have = c->in_len - rq->head_len;

	c->body = malloc(rq->length + 1);
	if (!c->body) {
		rq->status = 500;
		client_answer(m, c);
		return;
	}
	c->body_len = have < rq->length ? have : rq->length;
	memcpy(c->body, c->in + rq->head_len, c->body_len);
	c->state = CLIENT_BODY;
	/* A client that waits to be told to go on; a short write only makes it
	 * wait its own timeout, then send anyway. */
	if (c->body_len < rq->length && rq->expect_continue &&
	    send(c->fd, cont, sizeof(cont) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
		/* Best effort, as above. */
	}
	client_read_body(m, c);
}

static void client_read(struct rb_metrics *m, struct client *c)
{
	bool eof = false;

	while (c->in_len < sizeof(c->in)) {
		ssize_t r = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len, 0);
		if (r > 0) {
			c->in_len += (size_t)r;
			continue;
		}
		if (r == 0) {
			eof = true;
			break;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN)
			break;
		client_close(c);
		return;
	}
	parse_request(c->in, c->in_len, &c->rq);
	if (c->rq.status == 200 && c->rq.post)
		client_start_body(m, c); /* an EOF is read again there */
	else if (c->rq.status)
		client_answer(m, c);
	else if (eof) /* gave up before its request was complete */
		client_close(c);
}

static void client_event(struct rb_metrics *m, struct client *c)
{
	switch (c->state) {
	case CLIENT_READ:
		client_read(m, c);
		break;
	case CLIENT_BODY:
		client_read_body(m, c);
		break;
	case CLIENT_WRITE:
		client_write(c);
		break;
	case CLIENT_LINGER:
		client_linger(c);
		break;
	case CLIENT_FREE:
		break;
	}
}

/* Past its deadline: a client that sent part of a request hears why. */
static void client_expire(struct client *c)
{
	if ((c->state == CLIENT_READ && c->in_len) || c->state == CLIENT_BODY) {
		static const char timeout[] = "HTTP/1.1 408 Request Timeout\r\n"
		                              "Content-Length: 0\r\n"
		                              "Connection: close\r\n\r\n";
		if (send(c->fd, timeout, sizeof(timeout) - 1, MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
			/* Best effort: it is being closed anyway. */
		}
	}
	client_close(c);
}

static void accept_clients(struct rb_metrics *m, uint64_t now)
{
	for (int i = 0; i < METRICS_CLIENTS; i++) {
		struct client *c = NULL;
		int fd = accept4(m->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO)
				continue;
			if (errno != EAGAIN)
				m->backoff_until = now + METRICS_BACKOFF_MS;
			return;
		}
		/* A free slot, else the oldest client's: it has had its chance. */
		for (size_t k = 0; k < METRICS_CLIENTS; k++) {
			struct client *o = &m->clients[k];
			if (o->state == CLIENT_FREE) {
				c = o;
				break;
			}
			if (!c || o->order < c->order)
				c = o;
		}
		if (c->state != CLIENT_FREE)
			client_close(c);
		c->fd = fd;
		c->state = CLIENT_READ;
		c->order = ++m->accepts;
		c->deadline = now + METRICS_TIMEOUT_MS;
		c->in_len = 0;
	}
}

static void *metrics_main(void *arg)
{
	struct rb_metrics *m = arg;
	struct pollfd pfd[2 + METRICS_CLIENTS];
	size_t slot[2 + METRICS_CLIENTS];

	rb__log_bind(&m->srv->cfg); /* POST /impair logs what it did */
	for (;;) {
		uint64_t now = now_ms();
		bool listening = now >= m->backoff_until;
		nfds_t n = 0, first;
		int timeout = -1, r;

		pfd[n++] = (struct pollfd){.fd = m->wake_fd, .events = POLLIN};
		if (listening)
			pfd[n++] = (struct pollfd){.fd = m->lfd, .events = POLLIN};
		else
			timeout = (int)(m->backoff_until - now);
		first = n;
		for (size_t i = 0; i < METRICS_CLIENTS; i++) {
			struct client *c = &m->clients[i];
			int left;
			if (c->state == CLIENT_FREE)
				continue;
			pfd[n] = (struct pollfd){
			        .fd = c->fd,
			        .events = c->state == CLIENT_WRITE ? POLLOUT : POLLIN,
			};
			slot[n++] = i;
			left = c->deadline > now ? (int)(c->deadline - now) : 0;
			if (timeout < 0 || left < timeout)
				timeout = left;
		}
		r = poll(pfd, n, timeout);
		if (r < 0 && errno != EINTR)
			break;
		if (r > 0 && pfd[0].revents)
			break; /* rb_metrics_stop */
		now = now_ms();
		for (nfds_t k = first; r > 0 && k < n; k++)
			if (pfd[k].revents)
				client_event(m, &m->clients[slot[k]]);
		for (size_t i = 0; i < METRICS_CLIENTS; i++)
			if (m->clients[i].state != CLIENT_FREE && now >= m->clients[i].deadline)
				client_expire(&m->clients[i]);
		if (r > 0 && listening && pfd[1].revents)
			accept_clients(m, now);
	}
	rb__log_unbind(&m->srv->cfg);
	return NULL;
}

/* listen.c names the URL "listen URL"; this one is --metrics'. */
static void relabel(const char *msg, char *err, size_t errlen)
{
	const char *at = strstr(msg, "listen URL");

	if (at)
		snprintf(err, errlen, "%.*s--metrics URL%s", (int)(at - msg), msg, at + 10);
	else
		snprintf(err, errlen, "%s", msg);
}

int rb_metrics_start(struct rb_server *srv, const char *url, struct rb_metrics **out, char *err,
                     size_t errlen)
{
	struct rb_listen_opts o = {.backlog = METRICS_BACKLOG, .unix_mode = METRICS_UNIX_MODE};
	char dummy[8], msg[512];
	struct rb_metrics *m;
	sigset_t all, old;
	int rc;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	*out = NULL;
	if (!srv || !url || (strncmp(url, "tcp://", 6) != 0 && strncmp(url, "unix:", 5) != 0)) {
		snprintf(err, errlen, "invalid --metrics URL '%s': %s", url ? url : "(null)",
		         URL_HELP);
		return -EINVAL;
	}
	m = calloc(1, sizeof(*m));
	if (!m) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	m->srv = srv;
	m->lfd = m->wake_fd = -1;
	for (size_t i = 0; i < METRICS_CLIENTS; i++)
		m->clients[i].fd = -1;
	rc = rb__parse_url(url, &m->addr, msg, sizeof(msg));
	if (rc < 0) {
		relabel(msg, err, errlen);
		goto fail;
	}
	rc = rb__listen(&m->addr, &o, msg, sizeof(msg));
	if (rc < 0) {
		snprintf(err, errlen, "cannot listen on --metrics URL '%s': %s", url,
		         strerror(-rc));
		goto fail;
	}
	m->lfd = rc;
	m->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (m->wake_fd < 0) {
		rc = -errno;
		snprintf(err, errlen, "--metrics: %s", strerror(-rc));
		goto fail;
	}
	/* Signals are for the thread that runs the server, not this one. */
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	rc = -pthread_create(&m->thread, NULL, metrics_main, m);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc < 0) {
		snprintf(err, errlen, "--metrics: cannot start its thread: %s", strerror(-rc));
		goto fail;
	}
	pthread_setname_np(m->thread, "rebound-metrics");
	*out = m;
	return 0;
fail:
	if (m->wake_fd >= 0)
		close(m->wake_fd);
	if (m->lfd >= 0) {
		close(m->lfd);
		rb__unix_unlink_if_ours(&m->addr);
	}
	free(m);
	return rc;
}

const char *rb_metrics_url(const struct rb_metrics *m)
{
	return m ? m->addr.url : NULL;
}

void rb_metrics_stop(struct rb_metrics *m)
{
	uint64_t one = 1;

	if (!m)
		return;
	if (write(m->wake_fd, &one, sizeof(one)) < 0) {
		/* A full eventfd already holds a wake-up. */
	}
	pthread_join(m->thread, NULL);
	for (size_t i = 0; i < METRICS_CLIENTS; i++)
		if (m->clients[i].state != CLIENT_FREE)
			client_close(&m->clients[i]);
	close(m->lfd);
	rb__unix_unlink_if_ours(&m->addr);
	close(m->wake_fd);
	free(m);
}
