/* SPDX-License-Identifier: MIT */
/*
 * The metrics endpoint (issue 12): real HTTP requests over sockets, the
 * exposition format checked by a strict parser written here, values after
 * known traffic, exact status lines for what it refuses, and clients that
 * are slow, silent or garbage never holding up a good one.
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "helpers.h"

/* Longer than the endpoint's own 5 s deadline: a stall fails, never hangs. */
#define WAIT_MS 15000

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ==== a strict parser of the text exposition format, version 0.0.4 ==== */

#define EXPO_FAMILIES 256
#define EXPO_SAMPLES  1024
#define EXPO_NAME     128

struct expo_family {
	char name[EXPO_NAME];
	char type[16];
	char help[256];
	bool has_help, has_type;
	bool started, finished; /* its samples began; another family's came since */
};

struct expo_sample {
	char name[EXPO_NAME];
	char labels[256]; /* as written, for finding duplicates */
	char le[32];      /* the le label, if any */
	unsigned n_labels;
	double value;
	size_t family;
};

struct expo {
	struct expo_family f[EXPO_FAMILIES];
	size_t nf;
	struct expo_sample s[EXPO_SAMPLES];
	size_t ns;
	char err[512];
};

static bool is_name_start(char c, bool colon)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon && c == ':');
}

static bool is_name_char(char c, bool colon)
{
	return is_name_start(c, colon) || (c >= '0' && c <= '9');
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* (metric) or [a-zA-Z_][a-zA-Z0-9_]* (label). */
static size_t name_len(const char *p, bool colon)
{
	size_t n = 0;

	if (!is_name_start(p[0], colon))
		return 0;
	while (is_name_char(p[n], colon))
		n++;
	return n;
}

/* A Go ParseFloat-style value: [+-]digits[.digits][e[+-]digits], +Inf, -Inf, NaN. */
static bool parse_value(const char *s, size_t len, double *out)
{
	char buf[64];
	size_t i = 0, digits = 0;

	if (len == 0 || len >= sizeof(buf))
		return false;
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (strcmp(buf, "+Inf") == 0 || strcmp(buf, "-Inf") == 0 || strcmp(buf, "NaN") == 0) {
		*out = buf[0] == 'N' ? NAN : buf[0] == '-' ? -INFINITY : INFINITY;
		return true;
	}
	if (buf[i] == '+' || buf[i] == '-')
		i++;
	while (buf[i] >= '0' && buf[i] <= '9')
		i++, digits++;
	if (buf[i] == '.')
		for (i++; buf[i] >= '0' && buf[i] <= '9'; i++)
			digits++;
	if (digits == 0)
		return false;
	if (buf[i] == 'e' || buf[i] == 'E') {
		size_t exp = 0;
		i++;
		if (buf[i] == '+' || buf[i] == '-')
			i++;
		for (; buf[i] >= '0' && buf[i] <= '9'; i++)
			exp++;
		if (exp == 0)
			return false;
	}
	if (buf[i])
		return false;
	*out = strtod(buf, NULL);
	return true;
}

static size_t family_find(const struct expo *e, const char *name, size_t len)
{
	for (size_t i = 0; i < e->nf; i++)
		if (strlen(e->f[i].name) == len && memcmp(e->f[i].name, name, len) == 0)
			return i;
	return SIZE_MAX;
}

static size_t family_add(struct expo *e, const char *name, size_t len)
{
	size_t i = family_find(e, name, len);

	if (i != SIZE_MAX)
		return i;
	if (e->nf == EXPO_FAMILIES || len >= EXPO_NAME)
		return SIZE_MAX;
	memcpy(e->f[e->nf].name, name, len);
	e->f[e->nf].name[len] = '\0';
	return e->nf++;
}

/* The family a sample name belongs to: its own TYPE, or a histogram's
 * _bucket/_count/_sum (a summary's _count/_sum). */
static size_t sample_family(const struct expo *e, const char *name, size_t len)
{
	static const char *const suffixes[] = {"_bucket", "_count", "_sum"};
	size_t f = family_find(e, name, len);

	if (f != SIZE_MAX && e->f[f].has_type && strcmp(e->f[f].type, "histogram") != 0 &&
	    strcmp(e->f[f].type, "summary") != 0)
		return f;
	if (f != SIZE_MAX && strcmp(e->f[f].type, "summary") == 0)
		return f; /* a summary's quantile samples */
	for (size_t k = 0; k < 3; k++) {
		size_t sl = strlen(suffixes[k]);
		if (len <= sl || memcmp(name + len - sl, suffixes[k], sl) != 0)
			continue;
		f = family_find(e, name, len - sl);
		if (f == SIZE_MAX || !e->f[f].has_type)
			continue;
		if (strcmp(e->f[f].type, "histogram") == 0 ||
		    (k > 0 && strcmp(e->f[f].type, "summary") == 0))
			return f;
	}
	return SIZE_MAX;
}

#define FAIL(...)                                                                                  \
	do {                                                                                       \
		int k_ = snprintf(e->err, sizeof(e->err), "line %u: ", lineno);                    \
		snprintf(e->err + k_, sizeof(e->err) - (size_t)k_, __VA_ARGS__);                   \
		return e->err;                                                                     \
	} while (0)

/* # HELP name doc / # TYPE name type */
static const char *parse_comment(struct expo *e, const char *p, const char *end, unsigned lineno)
{
	bool help = strncmp(p, "# HELP ", 7) == 0;
	size_t n, f;

	if (!help && strncmp(p, "# TYPE ", 7) != 0)
		FAIL("a comment that is neither # HELP nor # TYPE");
	p += 7;
	n = name_len(p, true);
	if (n == 0)
		FAIL("bad metric name in # %s", help ? "HELP" : "TYPE");
	f = family_add(e, p, n);
	if (f == SIZE_MAX)
		FAIL("too many families");
	if (e->f[f].started)
		FAIL("# %s for %s after its samples", help ? "HELP" : "TYPE", e->f[f].name);
	p += n;
	if (help) {
		size_t o = 0;
		if (e->f[f].has_help)
			FAIL("second # HELP for %s", e->f[f].name);
		e->f[f].has_help = true;
		if (p < end && *p++ != ' ')
			FAIL("no space after the name in # HELP");
		/* Only \\ and \n are escapes in a docstring. */
		for (; p < end; p++) {
			char c = *p;
			if (c == '\\') {
				if (p + 1 == end || (p[1] != '\\' && p[1] != 'n'))
					FAIL("bad escape in # HELP");
				c = *++p == 'n' ? '\n' : '\\';
			}
			if (o + 1 < sizeof(e->f[f].help))
				e->f[f].help[o++] = c;
		}
		e->f[f].help[o] = '\0';
		return NULL;
	}
	static const char *const types[] = {"counter", "gauge", "histogram", "summary", "untyped"};
	if (e->f[f].has_type)
		FAIL("second # TYPE for %s", e->f[f].name);
	if (p == end || *p++ != ' ')
		FAIL("no type in # TYPE");
	for (size_t t = 0; t < 5; t++) {
		if ((size_t)(end - p) == strlen(types[t]) &&
		    memcmp(p, types[t], strlen(types[t])) == 0) {
			strcpy(e->f[f].type, types[t]);
			e->f[f].has_type = true;
			return NULL;
		}
	}
	FAIL("unknown type '%.*s'", (int)(end - p), p);
}

/* name{label="value",...} value [timestamp] */
static const char *parse_sample(struct expo *e, const char *p, const char *end, unsigned lineno)
{
	struct expo_sample *s;
	const char *v;
	size_t n = name_len(p, true), f;

	if (n == 0)
		FAIL("bad metric name");
	if (e->ns == EXPO_SAMPLES)
		FAIL("too many samples");
	s = &e->s[e->ns];
	memset(s, 0, sizeof(*s));
	if (n >= EXPO_NAME)
		FAIL("name too long");
	memcpy(s->name, p, n);
	f = sample_family(e, p, n);
	if (f == SIZE_MAX)
		FAIL("sample %s has no # TYPE", s->name);
	p += n;
	if (p < end && *p == '{') {
		const char *start = ++p;
		char seen[8][EXPO_NAME];
		for (;;) {
			size_t ln;
			if (p < end && *p == '}')
				break;
			ln = name_len(p, false);
			if (ln == 0 || ln >= EXPO_NAME)
				FAIL("bad label name");
			if (ln >= 2 && p[0] == '_' && p[1] == '_')
				FAIL("label names starting with __ are reserved");
			for (unsigned k = 0; k < s->n_labels && k < 8; k++)
				if (strlen(seen[k]) == ln && memcmp(seen[k], p, ln) == 0)
					FAIL("label %.*s given twice", (int)ln, p);
			if (s->n_labels < 8) {
				memcpy(seen[s->n_labels], p, ln);
				seen[s->n_labels][ln] = '\0';
			}
			bool is_le = ln == 2 && memcmp(p, "le", 2) == 0;
			p += ln;
			if (end - p < 2 || p[0] != '=' || p[1] != '"')
				FAIL("expected =\" after a label name");
			p += 2;
			size_t o = 0;
			for (; p < end && *p != '"'; p++) {
				char c = *p;
				if (c == '\\') {
					if (p + 1 == end ||
					    (p[1] != '\\' && p[1] != '"' && p[1] != 'n'))
						FAIL("bad escape in a label value");
					c = *++p == 'n' ? '\n' : *p;
				}
				if (is_le && o + 1 < sizeof(s->le))
					s->le[o++] = c;
			}
			if (p == end)
				FAIL("unterminated label value");
			p++;
			s->n_labels++;
			if (p < end && *p == ',') {
				p++;
				continue;
			}
			if (p < end && *p == '}')
				break;
			FAIL("expected , or } after a label");
		}
		if ((size_t)(p - start) >= sizeof(s->labels))
			FAIL("labels too long");
		memcpy(s->labels, start, (size_t)(p - start));
		p++;
	}
	if (p == end || *p++ != ' ')
		FAIL("expected one space before the value");
	v = p;
	while (p < end && *p != ' ')
		p++;
	if (!parse_value(v, (size_t)(p - v), &s->value))
		FAIL("bad value '%.*s'", (int)(p - v), v);
	if (p < end) { /* a timestamp: an integer of milliseconds */
		const char *t = ++p;
		if (p < end && *p == '-')
			p++;
		if (p == end)
			FAIL("empty timestamp");
		for (; p < end; p++)
			if (*p < '0' || *p > '9')
				FAIL("bad timestamp '%.*s'", (int)(end - t), t);
	}
	/* One family's samples together; each series once. */
	for (size_t i = 0; i < e->nf; i++)
		if (i != f && e->f[i].started)
			e->f[i].finished = true;
	if (e->f[f].finished)
		FAIL("samples of %s are not together", e->f[f].name);
	e->f[f].started = true;
	for (size_t i = 0; i < e->ns; i++)
		if (strcmp(e->s[i].name, s->name) == 0 && strcmp(e->s[i].labels, s->labels) == 0)
			FAIL("sample %s{%s} given twice", s->name, s->labels);
	s->family = f;
	e->ns++;
	return NULL;
}

/* Per histogram: _bucket samples with only le, le increasing, counts
 * cumulative, the last le +Inf and equal to _count, and a _sum; nothing
 * else. */
static const char *check_histograms(struct expo *e)
{
	unsigned lineno = 0;

	for (size_t f = 0; f < e->nf; f++) {
		const char *name = e->f[f].name;
		size_t nl = strlen(name), buckets = 0;
		double last_le = -INFINITY, last = 0, count = -1;
		bool has_sum = false;
		if (strcmp(e->f[f].type, "histogram") != 0)
			continue;
		for (size_t i = 0; i < e->ns; i++) {
			const struct expo_sample *s = &e->s[i];
			double le;
			if (s->family != f)
				continue;
			if (strcmp(s->name + nl, "_count") == 0) {
				count = s->value;
				continue;
			}
			if (strcmp(s->name + nl, "_sum") == 0) {
				has_sum = true;
				continue;
			}
			if (strcmp(s->name + nl, "_bucket") != 0)
				FAIL("histogram %s has a sample %s", name, s->name);
			if (s->n_labels != 1 || !parse_value(s->le, strlen(s->le), &le) ||
			    isnan(le))
				FAIL("%s: a bucket needs one label, le, a number", name);
			if (le <= last_le)
				FAIL("%s: le=\"%s\" does not increase", name, s->le);
			if (s->value < last)
				FAIL("%s: le=\"%s\" is not cumulative", name, s->le);
			last_le = le;
			last = s->value;
			buckets++;
		}
		if (buckets == 0 || last_le != INFINITY)
			FAIL("%s: the last bucket is not le=\"+Inf\"", name);
		if (count != last)
			FAIL("%s: _count %g is not the +Inf bucket %g", name, count, last);
		if (!has_sum)
			FAIL("%s: no _sum", name);
	}
	return NULL;
}

/* NULL if text is valid, else why (line N: ...). */
static const char *expo_parse(const char *text, struct expo *e)
{
	const char *p = text, *err;
	unsigned lineno = 0;

	memset(e, 0, sizeof(*e));
	if (*text && text[strlen(text) - 1] != '\n')
		FAIL("the last line has no newline");
	while (*p) {
		const char *end = strchr(p, '\n');
		lineno++;
		if (memchr(p, '\r', (size_t)(end - p)))
			FAIL("a carriage return");
		if (end == p)
			err = NULL; /* blank */
		else if (*p == '#')
			err = parse_comment(e, p, end, lineno);
		else
			err = parse_sample(e, p, end, lineno);
		if (err)
			return err;
		p = end + 1;
	}
	return check_histograms(e);
}

/* The value of name{labels} (labels as written, "" for none); asserts it exists. */
static double expo_value(const struct expo *e, const char *name, const char *labels)
{
	for (size_t i = 0; i < e->ns; i++)
		if (strcmp(e->s[i].name, name) == 0 && strcmp(e->s[i].labels, labels) == 0)
			return e->s[i].value;
	cr_assert_fail("no sample %s{%s}", name, labels);
	return 0;
}

static const struct expo_family *expo_family(const struct expo *e, const char *name)
{
	size_t f = family_find(e, name, strlen(name));

	return f == SIZE_MAX ? NULL : &e->f[f];
}

/* ==== HTTP over a socket ==== */

struct endpoint {
	int port;       /* tcp://127.0.0.1:PORT, or */
	char path[108]; /* unix:PATH */
	struct rb_metrics *m;
	struct test_server ts;
};

static void endpoint_start_with(struct endpoint *ep, const char *url,
                                void (*tweak)(struct rb_config *cfg))
{
	char err[512] = "";
	const char *bound;

	memset(ep, 0, sizeof(*ep));
	th_server_start(&ep->ts, NULL, tweak);
	cr_assert_eq(rb_metrics_start(ep->ts.srv, url, &ep->m, err, sizeof(err)), 0, "%s", err);
	bound = rb_metrics_url(ep->m);
	cr_assert_not_null(bound);
	if (strncmp(bound, "unix:", 5) == 0)
		snprintf(ep->path, sizeof(ep->path), "%s", bound + 5);
	else
		cr_assert_eq(sscanf(bound, "tcp://127.0.0.1:%d", &ep->port), 1, "%s", bound);
}

static void endpoint_start(struct endpoint *ep, const char *url)
{
	endpoint_start_with(ep, url, NULL);
}

static void endpoint_stop(struct endpoint *ep)
{
	rb_metrics_stop(ep->m);
	ep->m = NULL;
	th_server_stop(&ep->ts);
}

static int ep_connect(const struct endpoint *ep)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd;

	if (!ep->path[0])
		return th_connect(ep->port);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0);
	memcpy(sun.sun_path, ep->path, strlen(ep->path));
	cr_assert_eq(connect(fd, (struct sockaddr *)&sun, sizeof(sun)), 0, "connect %s: %s",
	             ep->path, strerror(errno));
	return fd;
}

static void send_all(int fd, const char *p, size_t len)
{
	while (len) {
		ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
		cr_assert_gt(w, 0, "send: %s", strerror(errno));
		p += w;
		len -= (size_t)w;
	}
}

/* Read fd to EOF into buf (NUL-terminated), within WAIT_MS; returns the length. */
static size_t read_to_eof(int fd, char *buf, size_t cap)
{
	uint64_t deadline = now_ms() + WAIT_MS;
	size_t n = 0;

	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int left = (int)(deadline > now_ms() ? deadline - now_ms() : 0);
		cr_assert_gt(poll(&pfd, 1, left), 0, "no EOF within %d ms; so far: %.*s", WAIT_MS,
		             (int)n, buf);
		ssize_t r = recv(fd, buf + n, cap - 1 - n, 0);
		cr_assert_geq(r, 0, "recv: %s", strerror(errno));
		if (r == 0)
			break;
		n += (size_t)r;
		cr_assert_lt(n, cap - 1, "response too large");
	}
	buf[n] = '\0';
	return n;
}

struct response {
	char raw[65536];
	size_t len;
	char status[128]; /* the status line, without CRLF */
	const char *headers;
	const char *body;
	size_t body_len;
};

/* Send req as it is on a new connection; read the whole response. */
static void exchange(const struct endpoint *ep, const char *req, size_t req_len, struct response *r)
{
	int fd = ep_connect(ep);
	const char *eol, *eoh;

	send_all(fd, req, req_len);
	r->len = read_to_eof(fd, r->raw, sizeof(r->raw));
	close(fd);
	eol = strstr(r->raw, "\r\n");
	cr_assert_not_null(eol, "no status line in: %s", r->raw);
	cr_assert_lt((size_t)(eol - r->raw), sizeof(r->status));
	memcpy(r->status, r->raw, (size_t)(eol - r->raw));
	r->status[eol - r->raw] = '\0';
	r->headers = eol + 2;
	eoh = strstr(r->raw, "\r\n\r\n");
	cr_assert_not_null(eoh, "no end of headers in: %s", r->raw);
	r->body = eoh + 4;
	r->body_len = r->len - (size_t)(r->body - r->raw);
}

static void request(const struct endpoint *ep, const char *req, struct response *r)
{
	exchange(ep, req, strlen(req), r);
}

/* The value of a response header (exact name, as we send it), or NULL. */
static const char *header(const struct response *r, const char *name, char *buf, size_t len)
{
	size_t nl = strlen(name);

	for (const char *h = r->headers; h < r->body - 2;) {
		const char *eol = strstr(h, "\r\n");
		if ((size_t)(eol - h) > nl + 2 && memcmp(h, name, nl) == 0 && h[nl] == ':' &&
		    h[nl + 1] == ' ') {
			snprintf(buf, len, "%.*s", (int)(eol - h - (ptrdiff_t)nl - 2), h + nl + 2);
			return buf;
		}
		h = eol + 2;
	}
	return NULL;
}

/* Status line, Content-Length = the body, Connection: close. */
static void expect_response(const struct response *r, const char *status)
{
	char v[128];

	cr_assert_str_eq(r->status, status, "response: %s", r->raw);
	cr_assert_not_null(header(r, "Content-Length", v, sizeof(v)), "%s", r->raw);
	cr_assert_eq(strtoull(v, NULL, 10), r->body_len, "Content-Length %s, body %zu bytes", v,
	             r->body_len);
	cr_assert_not_null(header(r, "Connection", v, sizeof(v)));
	cr_assert_str_eq(v, "close");
}

#define GET(path) "GET " path " HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n"

static struct expo *scrape(const struct endpoint *ep, struct response *r)
{
	struct expo *e = malloc(sizeof(*e));
	char v[128];
	const char *why;

	cr_assert_not_null(e);
	request(ep, GET("/metrics"), r);
	expect_response(r, "HTTP/1.1 200 OK");
	cr_assert_str_eq(header(r, "Content-Type", v, sizeof(v)),
	                 "text/plain; version=0.0.4; charset=utf-8");
	why = expo_parse(r->body, e);
	cr_assert_null(why, "invalid exposition: %s\n%s", why, r->body);
	return e;
}

/* ==== the parser itself: it must refuse what the format does not allow ==== */

Test(metrics, parser_refuses_what_the_format_does_not_allow)
{
	static const char *const bad[] = {
	        "foo 1\n",                                                  /* no TYPE */
	        "# TYPE foo gauge\nfoo 1",                                  /* no final newline */
	        "# TYPE 1foo gauge\n",                                      /* name */
	        "# TYPE foo gauge\nfoo{1a=\"x\"} 1\n",                      /* label name */
	        "# TYPE foo gauge\nfoo{__a=\"x\"} 1\n",                     /* reserved */
	        "# TYPE foo gauge\nfoo{a=\"x\\q\"} 1\n",                    /* escape */
	        "# TYPE foo gauge\nfoo{a=\"x\",a=\"y\"} 1\n",               /* label twice */
	        "# TYPE foo gauge\nfoo{a=\"x\"b=\"y\"} 1\n",                /* separator */
	        "# TYPE foo gauge\nfoo{a=\"x} 1\n",                         /* unterminated */
	        "# TYPE foo gauge\nfoo  1\n",                               /* spacing */
	        "# TYPE foo gauge\nfoo 1x\n",                               /* value */
	        "# TYPE foo gauge\nfoo inf\n",                              /* value */
	        "# TYPE foo gauge\nfoo 1 12.5\n",                           /* timestamp */
	        "# TYPE foo gauge\nfoo 1\r\n",                              /* CR */
	        "# TYPE foo gauge\n# TYPE foo counter\n",                   /* TYPE twice */
	        "# TYPE foo gauge\nfoo 1\n# HELP foo late\n",               /* HELP after samples */
	        "# TYPE foo bar\n",                                         /* type */
	        "# HELP foo a \\x b\n",                                     /* HELP escape */
	        "# a comment\n",                                            /* other comment */
	        "# TYPE foo gauge\nfoo 1\nfoo 2\n",                         /* sample twice */
	        "# TYPE a gauge\n# TYPE b gauge\na 1\nb 1\na{x=\"1\"} 1\n", /* apart */
	        "# TYPE h histogram\nh 1\n",                                /* bare histogram */
	        "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_count 1\n",    /* no +Inf */
	        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n",
	        ("# TYPE h histogram\nh_bucket{le=\"2\"} 1\nh_bucket{le=\"1\"} 1\n"
	         "h_bucket{le=\"+Inf\"} 1\nh_count 1\n"),
	        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n",
	        "# TYPE h histogram\nh_bucket{le=\"+Inf\",x=\"y\"} 1\nh_count 1\n",
	        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", /* no _sum */
	};
	struct expo *e = malloc(sizeof(*e));

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		cr_expect_not_null(expo_parse(bad[i], e), "accepted: %s", bad[i]);
	cr_assert_null(expo_parse("", e), "%s", e->err);
	cr_assert_null(expo_parse("# HELP foo a \\\\ b\\n c\n# TYPE foo gauge\n"
	                          "foo{a=\"x\\\"y\",b=\"\",} -1.5e3 1700000000\n\n"
	                          "# TYPE h histogram\nh_bucket{le=\"0.5\"} 1\n"
	                          "h_bucket{le=\"+Inf\"} 3\nh_sum 7\nh_count 3\n",
	                          e),
	               "%s", e->err);
	cr_assert_str_eq(e->f[0].help, "a \\ b\n c");
	cr_assert_eq(e->ns, 5);
	free(e);
}

/* ==== the endpoint ==== */

struct counts {
	uint64_t closed;
};

static bool all_closed(const struct rb_stats *st, void *arg)
{
	return st->closed == ((struct counts *)arg)->closed && st->active == 0;
}

/* Which family an RB_STATS field lands in: the histograms' buckets. */
static const struct {
	const char *field, *family;
} bucket_fields[] = {
        {"duration_under_1ms", "rebound_session_duration_seconds"},
        {"duration_under_10ms", "rebound_session_duration_seconds"},
        {"duration_under_100ms", "rebound_session_duration_seconds"},
        {"duration_under_1s", "rebound_session_duration_seconds"},
        {"duration_under_10s", "rebound_session_duration_seconds"},
        {"duration_under_100s", "rebound_session_duration_seconds"},
        {"duration_over_100s", "rebound_session_duration_seconds"},
        {"session_bytes_under_1k", "rebound_session_bytes"},
        {"session_bytes_under_64k", "rebound_session_bytes"},
        {"session_bytes_under_1m", "rebound_session_bytes"},
        {"session_bytes_under_64m", "rebound_session_bytes"},
        {"session_bytes_over_64m", "rebound_session_bytes"},
        {"connect_under_1ms", "rebound_upstream_connect_seconds"},
        {"connect_under_10ms", "rebound_upstream_connect_seconds"},
        {"connect_under_100ms", "rebound_upstream_connect_seconds"},
        {"connect_under_1s", "rebound_upstream_connect_seconds"},
        {"connect_over_1s", "rebound_upstream_connect_seconds"},
        {"duration_us", "rebound_session_duration_seconds"},
        {"session_bytes", "rebound_session_bytes"},
        {"connect_us", "rebound_upstream_connect_seconds"},
};

static const char *bucket_family(const char *field)
{
	for (size_t i = 0; i < sizeof(bucket_fields) / sizeof(bucket_fields[0]); i++)
		if (strcmp(bucket_fields[i].field, field) == 0)
			return bucket_fields[i].family;
	return NULL;
}

/* Every field of st in e: a counter rebound_<name>_total or a gauge
 * rebound_<name> with its doc as HELP and its value, or a histogram bucket. */
static void expect_every_field(const struct expo *e, const struct rb_stats *st)
{
#define CHECK(fld, how, doc)                                                                       \
	do {                                                                                       \
		const char *fam = bucket_family(#fld);                                             \
		const struct expo_family *c = expo_family(e, "rebound_" #fld "_total");            \
		const struct expo_family *g = expo_family(e, "rebound_" #fld);                     \
		if (fam) {                                                                         \
			cr_expect_not_null(expo_family(e, fam), "no histogram %s", fam);           \
			cr_expect_null(c, #fld " is a bucket, not a counter");                     \
			break;                                                                     \
		}                                                                                  \
		cr_assert(c || g, "RB_STATS field " #fld " is missing");                           \
		cr_assert(!(c && g), #fld " is both a counter and a gauge");                       \
		const struct expo_family *f_ = c ? c : g;                                          \
		cr_expect_str_eq(f_->type, c ? "counter" : "gauge", "%s", f_->name);               \
		cr_expect(f_->has_help, "%s has no HELP", f_->name);                               \
		cr_expect_str_eq(f_->help, doc);                                                   \
		cr_expect_eq(expo_value(e, f_->name, ""), (double)st->fld, "%s", f_->name);        \
	} while (0);
	RB_STATS(CHECK)
#undef CHECK
}

/* Cumulative buckets of family from the fields (in order), and _count. */
static void expect_histogram(const struct expo *e, const char *family, const char *const *le,
                             const uint64_t *fields, size_t n)
{
	char name[160], labels[64];
	uint64_t sum = 0;

	snprintf(name, sizeof(name), "%s_bucket", family);
	for (size_t i = 0; i < n; i++) {
		sum += fields[i];
		snprintf(labels, sizeof(labels), "le=\"%s\"", le[i]);
		cr_expect_eq(expo_value(e, name, labels), (double)sum, "%s{%s}", name, labels);
	}
	snprintf(name, sizeof(name), "%s_count", family);
	cr_expect_eq(expo_value(e, name, ""), (double)sum, "%s", name);
}

/*
 * Scrape while nothing moves: the stats before and after the scrape are
 * the same, so the scrape must show exactly them.
 */
static struct expo *scrape_still(const struct endpoint *ep, struct response *r, struct rb_stats *st)
{
	for (int tries = 0; tries < 100; tries++) {
		struct rb_stats after;
		struct expo *e;
		rb_server_stats(ep->ts.srv, st);
		e = scrape(ep, r);
		rb_server_stats(ep->ts.srv, &after);
		if (memcmp(st, &after, sizeof(after)) == 0)
			return e;
		free(e);
	}
	cr_assert_fail("the stats never held still");
	return NULL;
}

Test(metrics, exposition_after_known_traffic, .timeout = 120)
{
	static const size_t lens[] = {1000, 70000, 300000};
	const size_t k = sizeof(lens) / sizeof(lens[0]);
	struct response *r = malloc(sizeof(*r));
	unsigned char *data = malloc(300000);
	struct th_stream s[3];
	struct endpoint ep;
	struct rb_stats st;
	struct expo *e;
	size_t total = 0;
	char labels[128];

	th_fill(data, 300000, 12);
	endpoint_start(&ep, "tcp://127.0.0.1:0");
	for (size_t i = 0; i < k; i++) {
		s[i] = (struct th_stream){
		        .fd = th_connect(ep.ts.port), .data = data, .len = lens[i]};
		total += lens[i];
	}
	th_run_streams(s, k);
	for (size_t i = 0; i < k; i++)
		close(s[i].fd);
	th_wait_stats(&ep.ts, all_closed, &(struct counts){.closed = k}, "every session closed");

	e = scrape_still(&ep, r, &st);
	/* The traffic, exactly. */
	cr_expect_eq(expo_value(e, "rebound_bytes_in_total", ""), (double)total);
	cr_expect_eq(expo_value(e, "rebound_bytes_out_total", ""), (double)total);
	cr_expect_eq(expo_value(e, "rebound_accepted_total", ""), (double)k);
	cr_expect_eq(expo_value(e, "rebound_closed_total", ""), (double)k);
	cr_expect_eq(expo_value(e, "rebound_active", ""), 0.0);
	cr_expect_eq(expo_value(e, "rebound_buffered", ""), 0.0);
	cr_expect_eq(expo_value(e, "rebound_closed_eof_total", ""), (double)k);
	/* Each session moved twice its length (in + out): 2000, 140000 and
	 * 600000 bytes; all of them lasted under 100 s. */
	cr_expect_eq(expo_value(e, "rebound_session_bytes_bucket", "le=\"1023\""), 0.0);
	cr_expect_eq(expo_value(e, "rebound_session_bytes_bucket", "le=\"65535\""), 1.0);
	cr_expect_eq(expo_value(e, "rebound_session_bytes_bucket", "le=\"1048575\""), 3.0);
	cr_expect_eq(expo_value(e, "rebound_session_bytes_count", ""), (double)k);
	cr_expect_eq(expo_value(e, "rebound_session_duration_seconds_bucket", "le=\"100\""),
	             (double)k);
	cr_expect_eq(expo_value(e, "rebound_session_duration_seconds_count", ""), (double)k);
	/* The sums: every byte each way, and the durations as measured. */
	cr_expect_eq(expo_value(e, "rebound_session_bytes_sum", ""), (double)(2 * total));
	cr_expect_eq(st.session_bytes, 2 * total);
	cr_expect_gt(st.duration_us, 0);
	cr_expect_eq(expo_value(e, "rebound_session_duration_seconds_sum", ""),
	             (double)st.duration_us / 1e6);
	cr_expect_eq(expo_value(e, "rebound_upstream_connect_seconds_sum", ""), 0.0);
	snprintf(labels, sizeof(labels), "version=\"%s\",engine=\"%s\"", RB_VERSION,
	         rb_engine_name(rb_server_engine(ep.ts.srv)));
	cr_expect_eq(expo_value(e, "rebound_info", labels), 1.0);
	/* Every counter, with its doc; counters end in _total, all are ours. */
	expect_every_field(e, &st);
	for (size_t i = 0; i < e->nf; i++) {
		const struct expo_family *f = &e->f[i];
		cr_expect(strncmp(f->name, "rebound_", 8) == 0, "%s", f->name);
		cr_expect(f->has_help && f->has_type, "%s", f->name);
		if (strcmp(f->type, "counter") == 0)
			cr_expect(strlen(f->name) > 6 &&
			                  strcmp(f->name + strlen(f->name) - 6, "_total") == 0,
			          "counter %s does not end in _total", f->name);
	}
	/* The histograms, bucket by bucket, from the range counters. */
	expect_histogram(e, "rebound_session_duration_seconds",
	                 (const char *const[]){"0.001", "0.01", "0.1", "1", "10", "100", "+Inf"},
	                 (const uint64_t[]){st.duration_under_1ms, st.duration_under_10ms,
	                                    st.duration_under_100ms, st.duration_under_1s,
	                                    st.duration_under_10s, st.duration_under_100s,
	                                    st.duration_over_100s},
	                 7);
	expect_histogram(e, "rebound_session_bytes",
	                 (const char *const[]){"1023", "65535", "1048575", "67108863", "+Inf"},
	                 (const uint64_t[]){st.session_bytes_under_1k, st.session_bytes_under_64k,
	                                    st.session_bytes_under_1m, st.session_bytes_under_64m,
	                                    st.session_bytes_over_64m},
	                 5);
	expect_histogram(e, "rebound_upstream_connect_seconds",
	                 (const char *const[]){"0.001", "0.01", "0.1", "1", "+Inf"},
	                 (const uint64_t[]){st.connect_under_1ms, st.connect_under_10ms,
	                                    st.connect_under_100ms, st.connect_under_1s,
	                                    st.connect_over_1s},
	                 5);
	free(e);
	endpoint_stop(&ep);
	free(data);
	free(r);
}

/* GET /stats is the JSON snapshot, as rb_server_stats_json writes it. */
Test(metrics, stats_json)
{
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	struct th_stream s;
	char json[8192], v[64];

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	s = (struct th_stream){
	        .fd = th_connect(ep.ts.port), .data = (const void *)"hello", .len = 5};
	th_run_streams(&s, 1);
	close(s.fd);
	th_wait_stats(&ep.ts, all_closed, &(struct counts){.closed = 1}, "the session closed");
	for (int tries = 0;; tries++) {
		char after[8192];
		cr_assert_lt(tries, 100, "the stats never held still");
		size_t n = (size_t)rb_server_stats_json(ep.ts.srv, json, sizeof(json));
		request(&ep, GET("/stats"), r);
		rb_server_stats_json(ep.ts.srv, after, sizeof(after));
		if (strcmp(json, after) != 0)
			continue;
		expect_response(r, "HTTP/1.1 200 OK");
		cr_assert_str_eq(header(r, "Content-Type", v, sizeof(v)), "application/json");
		json[n++] = '\n';
		json[n] = '\0';
		cr_assert_str_eq(r->body, json);
		cr_assert_not_null(strstr(r->body, "\"bytes_in\":5,"));
		cr_assert_not_null(strstr(r->body, "\"accepted_per_worker\":[1]}"), "%s", r->body);
		break;
	}
	endpoint_stop(&ep);
	free(r);
}

/* What it refuses, with the exact status line; HEAD, HTTP/1.0, queries. */
Test(metrics, status_lines)
{
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	char v[64], big[10000];

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	request(&ep, GET("/nope"), r);
	expect_response(r, "HTTP/1.1 404 Not Found");
	request(&ep, GET("/"), r);
	expect_response(r, "HTTP/1.1 404 Not Found");
	request(&ep, GET("/metrics/x"), r);
	expect_response(r, "HTTP/1.1 404 Not Found");

	/* Other methods: 405 and what is allowed (the body is never read). */
	request(&ep, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", r);
	expect_response(r, "HTTP/1.1 405 Method Not Allowed");
	cr_assert_str_eq(header(r, "Allow", v, sizeof(v)), "GET, HEAD");
	request(&ep, "DELETE /stats HTTP/1.1\r\nHost: x\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 405 Method Not Allowed");
	request(&ep, "get /stats HTTP/1.1\r\nHost: x\r\n\r\n", r); /* methods are case-sensitive */
	expect_response(r, "HTTP/1.1 405 Method Not Allowed");

	/* Malformed: 400 at once, as soon as the bad line is complete. */
	static const char *const malformed[] = {
	        "GARBAGE\r\n",
	        "GET /metrics\r\n",                        /* no version */
	        "GET  /metrics HTTP/1.1\r\n",              /* two spaces */
	        "GET /metrics HTTP/1.1 \r\n",              /* trailing space */
	        "GET /metrics HTTP/1.x\r\n",               /* version */
	        "GET metrics HTTP/1.1\r\nHost: x\r\n\r\n", /* not a path */
	        "GET /metrics HTTP/1.1\r\n\r\n",           /* HTTP/1.1 without Host */
	        "GET /metrics HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
	        "GET /metrics HTTP/1.1\r\nHost : x\r\n",           /* space before the colon */
	        "GET /metrics HTTP/1.1\r\nHost: x\r\n folded\r\n", /* obsolete folding */
	        "GET /metrics HTTP/1.1\r\nHost: x\r\nNo-Colon\r\n",
	        "GET /metrics HTTP/1.1\r\nHost: x\r\nX: a\x01z\r\n", /* control character */
	        "GET /met\rrics HTTP/1.1\r\nHost: x\r\n\r\n",
	        "\x16\x03\x01\x02\x05\x01\x02\x01\xfc\x03\x03\n", /* a TLS hello */
	};
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		request(&ep, malformed[i], r);
		expect_response(r, "HTTP/1.1 400 Bad Request");
	}
	/* A NUL inside a header value. */
	exchange(&ep, "GET /stats HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n", 40, r);
	expect_response(r, "HTTP/1.1 400 Bad Request");

	request(&ep, "GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 505 HTTP Version Not Supported");

	/* A head larger than 8 KiB. */
	static const char big_head[] = "GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: ";
	memset(big, 'a', sizeof(big));
	memcpy(big, big_head, sizeof(big_head) - 1);
	memcpy(big + sizeof(big) - 5, "\r\n\r\n", 5);
	request(&ep, big, r);
	expect_response(r, "HTTP/1.1 431 Request Header Fields Too Large");

	/* What is allowed: HTTP/1.0 without Host, a query, the absolute form, bare
	 * LF line ends, empty lines before the request line. */
	request(&ep, "GET /stats HTTP/1.0\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 200 OK");
	request(&ep, GET("/metrics?name[]=rebound_active"), r);
	expect_response(r, "HTTP/1.1 200 OK");
	request(&ep, "GET http://localhost:9/stats HTTP/1.1\r\nHost: localhost:9\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 200 OK");
	request(&ep, "GET /stats HTTP/1.1\nhost: x\n\n", r);
	expect_response(r, "HTTP/1.1 200 OK");
	request(&ep, "\r\n\r\nGET /stats HTTP/1.1\r\nHost: x\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 200 OK");

	/* HEAD: the headers of GET, no body. */
	request(&ep, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n", r);
	cr_assert_str_eq(r->status, "HTTP/1.1 200 OK");
	cr_assert_eq(r->body_len, 0, "HEAD got a body: %s", r->body);
	cr_assert_gt(strtoull(header(r, "Content-Length", v, sizeof(v)), NULL, 10), 1000);
	cr_assert_str_eq(header(r, "Content-Type", v, sizeof(v)),
	                 "text/plain; version=0.0.4; charset=utf-8");
	endpoint_stop(&ep);
	free(r);
}

/* A request that arrives a byte at a time is parsed as it comes. */
Test(metrics, request_in_pieces)
{
	static const char req[] = GET("/stats");
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	int one = 1, fd;

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	fd = ep_connect(&ep);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (size_t i = 0; i < sizeof(req) - 1; i++)
		send_all(fd, req + i, 1);
	r->len = read_to_eof(fd, r->raw, sizeof(r->raw));
	close(fd);
	cr_assert(strncmp(r->raw, "HTTP/1.1 200 OK\r\n", 17) == 0, "%s", r->raw);
	endpoint_stop(&ep);
	free(r);
}

/* Nothing can arrive on fd now, nor has EOF: the endpoint still holds it. */
static void expect_held(int fd)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};

	cr_assert_eq(poll(&pfd, 1, 0), 0, "closed or answered early (revents %#x)", pfd.revents);
}

/*
 * Slow, silent and garbage clients each hold a slot, not the thread: a good
 * client is answered while they are all still connected. Then the deadline
 * ends them: 408 for one that sent part of a request, a plain close for one
 * that sent nothing.
 */
Test(metrics, slow_clients_do_not_block, .timeout = 60)
{
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	char buf[4096], junk[3000];
	int slow, silent, junky, bad;
	size_t n;

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	slow = ep_connect(&ep);
	send_all(slow, "GET /metrics HTTP/1.1\r\nHo", 25);
	silent = ep_connect(&ep);
	junky = ep_connect(&ep);
	memset(junk, 'z', sizeof(junk)); /* no line end: it waits for more */
	send_all(junky, junk, sizeof(junk));
	bad = ep_connect(&ep);
	send_all(bad, "\x01\x02 nonsense\r\n", 13);

	/* The garbage line is refused at once, the good client is served... */
	n = read_to_eof(bad, buf, sizeof(buf));
	cr_assert(n > 0 && strncmp(buf, "HTTP/1.1 400 Bad Request\r\n", 26) == 0, "%s", buf);
	close(bad);
	struct expo *e = scrape(&ep, r);
	free(e);
	request(&ep, GET("/stats"), r);
	expect_response(r, "HTTP/1.1 200 OK");
	/* ...while the others are still held. */
	expect_held(slow);
	expect_held(silent);
	expect_held(junky);

	/* The deadline: a 408 for partial requests, a plain close otherwise. */
	n = read_to_eof(slow, buf, sizeof(buf));
	cr_assert(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0, "%zu: %s", n, buf);
	n = read_to_eof(junky, buf, sizeof(buf));
	cr_assert(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0, "%zu: %s", n, buf);
	cr_assert_eq(read_to_eof(silent, buf, sizeof(buf)), 0);
	close(slow);
	close(silent);
	close(junky);
	endpoint_stop(&ep);
	free(r);
}

/* More idle clients than slots: the oldest make room, a good one is served. */
Test(metrics, idle_flood_does_not_lock_out, .timeout = 60)
{
	enum { IDLE = 40 };
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	int idle[IDLE];
	char buf[64];

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	for (int i = 0; i < IDLE; i++)
		idle[i] = ep_connect(&ep);
	request(&ep, GET("/stats"), r);
	expect_response(r, "HTTP/1.1 200 OK");
	/* The first one was let go to make room, before any deadline. */
	cr_assert_eq(read_to_eof(idle[0], buf, sizeof(buf)), 0);
	expect_held(idle[IDLE - 1]);
	for (int i = 0; i < IDLE; i++)
		close(idle[i]);
	endpoint_stop(&ep);
	free(r);
}

/* Scrapes while bytes flow: each one valid, the counters never going back. */
Test(metrics, scrapes_during_traffic, .timeout = 120)
{
	const size_t len = 4u << 20;
	struct response *r = malloc(sizeof(*r));
	unsigned char *data = malloc(len), *back = malloc(len);
	struct endpoint ep;
	double last_in = 0;
	size_t sent = 0, got = 0;
	int fd;

	th_fill(data, len, 5);
	endpoint_start(&ep, "tcp://127.0.0.1:0");
	fd = th_connect(ep.ts.port);
	th_set_nonblock(fd);
	for (int scrapes = 0; got < len || scrapes < 5; scrapes++) {
		/* Move some bytes (at most 256 KiB back), then look. */
		size_t until = got + (256u << 10);
		while (got < len && got < until) {
			struct pollfd pfd = {.fd = fd,
			                     .events = POLLIN | (sent < len ? POLLOUT : 0)};
			cr_assert_gt(poll(&pfd, 1, WAIT_MS), 0);
			if (pfd.revents & POLLOUT) {
				ssize_t w =
				        send(fd, data + sent,
				             len - sent > 65536 ? 65536 : len - sent, MSG_NOSIGNAL);
				if (w > 0)
					sent += (size_t)w;
			}
			if (pfd.revents & POLLIN) {
				ssize_t n = recv(fd, back + got, len - got, 0);
				cr_assert_gt(n, 0);
				got += (size_t)n;
			}
		}
		struct expo *e = scrape(&ep, r);
		double in = expo_value(e, "rebound_bytes_in_total", "");
		cr_assert_geq(in, last_in, "bytes_in went back: %g after %g", in, last_in);
		cr_assert_leq(in, (double)sent);
		last_in = in;
		free(e);
	}
	cr_assert(memcmp(data, back, len) == 0);
	close(fd);
	endpoint_stop(&ep);
	free(data);
	free(back);
	free(r);
}

/* unix:PATH: served there, the socket file removed at stop. */
Test(metrics, unix_socket)
{
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	char dir[] = "/tmp/rebound-metrics-XXXXXX", url[128], path[120];
	struct stat st;

	cr_assert_not_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/m.sock", dir);
	snprintf(url, sizeof(url), "unix:%s", path);
	endpoint_start(&ep, url);
	cr_assert_str_eq(rb_metrics_url(ep.m), url);
	cr_assert_eq(stat(path, &st), 0);
	cr_assert(S_ISSOCK(st.st_mode));
	struct expo *e = scrape(&ep, r);
	free(e);
	request(&ep, GET("/stats"), r);
	expect_response(r, "HTTP/1.1 200 OK");
	endpoint_stop(&ep);
	cr_assert_eq(stat(path, &st), -1, "the socket file is still there");
	rmdir(dir);
	free(r);
}

static void expect_start_error(struct rb_server *srv, const char *url, int rc, const char *msg)
{
	struct rb_metrics *m = (void *)1;
	char err[512] = "";

	cr_expect_eq(rb_metrics_start(srv, url, &m, err, sizeof(err)), rc, "%s: %s", url, err);
	cr_expect_null(m);
	cr_expect_str_eq(err, msg);
}

/* Bad URLs and an address in use: the value named, one line. */
Test(metrics, bad_urls)
{
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t slen = sizeof(sin);
	struct test_server ts;
	char url[64], msg[160];
	int fd;

	th_server_start(&ts, NULL, NULL);
	expect_start_error(ts.srv, "http://127.0.0.1:80", -EINVAL,
	                   "invalid --metrics URL 'http://127.0.0.1:80': expected tcp://HOST:PORT, "
	                   "tcp://[IPV6]:PORT or unix:PATH");
	expect_start_error(ts.srv, "udp://127.0.0.1:0", -EINVAL,
	                   "invalid --metrics URL 'udp://127.0.0.1:0': expected tcp://HOST:PORT, "
	                   "tcp://[IPV6]:PORT or unix:PATH");
	expect_start_error(ts.srv, "fd:3", -EINVAL,
	                   "invalid --metrics URL 'fd:3': expected tcp://HOST:PORT, "
	                   "tcp://[IPV6]:PORT or unix:PATH");
	expect_start_error(ts.srv, "tcp://127.0.0.1:99999", -EINVAL,
	                   "invalid port '99999' in --metrics URL 'tcp://127.0.0.1:99999': "
	                   "expected 0 to 65535");
	expect_start_error(ts.srv, "tcp://no.such.host.invalid:9", -EINVAL,
	                   "invalid host in --metrics URL 'tcp://no.such.host.invalid:9': not an "
	                   "address or known name");
	expect_start_error(ts.srv, "unix:", -EINVAL,
	                   "invalid --metrics URL 'unix:': empty socket path");

	fd = socket(AF_INET, SOCK_STREAM, 0);
	cr_assert_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	cr_assert_eq(listen(fd, 1), 0);
	getsockname(fd, (struct sockaddr *)&sin, &slen);
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", ntohs(sin.sin_port));
	snprintf(msg, sizeof(msg), "cannot listen on --metrics URL '%s': Address already in use",
	         url);
	expect_start_error(ts.srv, url, -EADDRINUSE, msg);
	close(fd);
	rb_metrics_stop(NULL);
	th_server_stop(&ts);
}

/* Stopping with clients connected ends them, and returns. */
Test(metrics, stop_with_clients)
{
	struct endpoint ep;
	char buf[64];
	int fds[3];

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	fds[0] = ep_connect(&ep);
	fds[1] = ep_connect(&ep);
	send_all(fds[1], "GET /stats HTTP/1.1\r\n", 21);
	fds[2] = ep_connect(&ep);
	send_all(fds[2], GET("/stats"), strlen(GET("/stats")));
	/* The third is answered; the others wait for more. */
	cr_assert_gt(recv(fds[2], buf, sizeof(buf), MSG_WAITALL), 0);
	endpoint_stop(&ep);
	for (int i = 0; i < 2; i++) {
		cr_assert_eq(read_to_eof(fds[i], buf, sizeof(buf)), 0);
		close(fds[i]);
	}
	close(fds[2]);
}

/* ==== /impair: the impairments in force, replaced at run time ==== */

/* What the server logged about /impair, a line each. */
static pthread_mutex_t impair_log_mu = PTHREAD_MUTEX_INITIALIZER;
static char impair_log[8192];

static void impair_log_fn(void *ctx, enum rb_log_level level, const char *msg)
{
	(void)ctx;
	if (strstr(msg, "impair") == NULL)
		return;
	pthread_mutex_lock(&impair_log_mu);
	snprintf(impair_log + strlen(impair_log), sizeof(impair_log) - strlen(impair_log),
	         "%d %s\n", (int)level, msg);
	pthread_mutex_unlock(&impair_log_mu);
}

static void log_impair(struct rb_config *cfg)
{
	cfg->log_fn = impair_log_fn;
	cfg->log_level = RB_LOG_INFO;
}

/* The lines logged since the last call, emptied. */
static void expect_impair_log(const char *want)
{
	pthread_mutex_lock(&impair_log_mu);
	cr_assert_str_eq(impair_log, want);
	impair_log[0] = '\0';
	pthread_mutex_unlock(&impair_log_mu);
}

/* POST /impair with body as it is (len bytes), Content-Length told. */
static void post_impair(const struct endpoint *ep, const char *body, size_t len, struct response *r)
{
	char req[20000];
	int n = snprintf(req, sizeof(req),
	                 "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: %zu\r\n\r\n", len);

	cr_assert_lt((size_t)n + len, sizeof(req));
	memcpy(req + n, body, len);
	exchange(ep, req, (size_t)n + len, r);
}

#define POST_IMPAIR(ep, text, r) post_impair(ep, text, strlen(text), r)

/* The response is status, with exactly body as text/plain. */
static void expect_text(const struct response *r, const char *status, const char *body)
{
	char v[128];

	expect_response(r, status);
	cr_assert_str_eq(header(r, "Content-Type", v, sizeof(v)), "text/plain; charset=utf-8");
	cr_assert_str_eq(r->body, body, "%s", r->raw);
}

static void expect_impair(const struct endpoint *ep, const char *now)
{
	struct response *r = malloc(sizeof(*r));

	request(ep, GET("/impair"), r);
	expect_text(r, "HTTP/1.1 200 OK", now);
	free(r);
}

/* Read fd until EOF (an RST is a test failure) within WAIT_MS; returns the bytes. */
static size_t echoed_to_eof(int fd, unsigned char *buf, size_t cap)
{
	uint64_t deadline = now_ms() + WAIT_MS;
	size_t n = 0;

	for (;;) {
		struct pollfd pfd = {.fd = fd, .events = POLLIN};
		int left = (int)(deadline > now_ms() ? deadline - now_ms() : 0);
		ssize_t r;
		cr_assert_gt(poll(&pfd, 1, left), 0, "no EOF within %d ms (%zu bytes)", WAIT_MS, n);
		r = recv(fd, buf + n, cap - n, 0);
		cr_assert_geq(r, 0, "recv: %s", strerror(errno));
		if (r == 0)
			return n;
		n += (size_t)r;
		cr_assert_lt(n, cap, "more came back than was sent");
	}
}

/* A session that sends 10 bytes, half-closes, and gets back what it gets. */
static size_t echo_ten(int port, unsigned char *back)
{
	static const char ten[] = "0123456789";
	int fd = th_connect(port);
	size_t n;

	send_all(fd, ten, 10);
	shutdown(fd, SHUT_WR);
	n = echoed_to_eof(fd, back, 64);
	close(fd);
	cr_assert(memcmp(back, ten, n) == 0, "the bytes that came back are not the ones sent");
	return n;
}

/*
 * POST /impair: the new set goes to new sessions (an open one keeps its
 * own), the answer and GET /impair tell it exactly; a bad set is a 400 with
 * the command line's error and the old set stays; an empty body clears.
 */
Test(metrics, impair_post_applies_to_new_sessions, .timeout = 60)
{
	struct response *r = malloc(sizeof(*r));
	unsigned char back[64];
	struct endpoint ep;
	struct rb_impair imp;
	char want[256];
	int open_fd;

	endpoint_start_with(&ep, "tcp://127.0.0.1:0", log_impair);
	rb_server_impair(ep.ts.srv, &imp);
	snprintf(want, sizeof(want),
	         "impairments: none --seed %" PRIu64 " (replay with --seed %" PRIu64 ")\n",
	         imp.seed, imp.seed);
	expect_impair(&ep, want);
	cr_assert_eq(echo_ten(ep.ts.port, back), 10);

	/* A session open before the POST: a round trip proves it is accepted. */
	open_fd = th_connect(ep.ts.port);
	send_all(open_fd, "a", 1);
	cr_assert_eq(recv(open_fd, back, 1, MSG_WAITALL), 1);

	POST_IMPAIR(&ep, "--close-after 4 --seed 42", r);
	expect_text(
	        r, "HTTP/1.1 200 OK",
	        "impairments for new sessions (open ones keep theirs): --close-after 4 --seed 42 "
	        "(replay with --seed 42)\n");
	expect_impair(&ep, "impairments: --close-after 4 --seed 42 (replay with --seed 42)\n");
	expect_impair_log("6 impairments (POST /impair, new sessions): --close-after 4 --seed 42 "
	                  "(replay with --seed 42)\n");
	cr_assert_eq(echo_ten(ep.ts.port, back), 4, "a new session is not cut after 4 bytes");
	send_all(open_fd, "0123456789", 10);
	shutdown(open_fd, SHUT_WR);
	cr_assert_eq(echoed_to_eof(open_fd, back, sizeof(back)), 10, "the open session was cut");
	close(open_fd);

	/* Refused: the command line's error, exactly, and nothing changes. */
	POST_IMPAIR(&ep, "--close-after 4x", r);
	expect_text(
	        r, "HTTP/1.1 400 Bad Request",
	        "invalid --close-after '4x': expected a byte count (0, 1000, 64k), then [@P]\n");
	POST_IMPAIR(&ep, "--delay 100000000ms\n", r); /* parses, fails the check */
	expect_text(r, "HTTP/1.1 400 Bad Request",
	            "invalid --delay '100000000ms': must be at most 600000 ms\n");
	POST_IMPAIR(&ep, "# slow\n--delay 10ms\n--rate fast\n", r); /* more lines: which one */
	expect_text(r, "HTTP/1.1 400 Bad Request",
	            "line 3: invalid --rate 'fast': expected bits/s with k, m or g (10m = 10 "
	            "Mbit/s), then [@P]\n");
	POST_IMPAIR(&ep, "--no-such 1", r);
	expect_text(r, "HTTP/1.1 400 Bad Request", "--no-such is not an impairment\n");
	post_impair(&ep, "--delay\0 5ms", 12, r);
	expect_text(r, "HTTP/1.1 400 Bad Request", "the body has a NUL byte at offset 7\n");
	expect_impair(&ep, "impairments: --close-after 4 --seed 42 (replay with --seed 42)\n");
	expect_impair_log(
	        "4 POST /impair refused, nothing changed: invalid --close-after '4x': "
	        "expected a byte count (0, 1000, 64k), then [@P]\n"
	        "4 POST /impair refused, nothing changed: invalid --delay '100000000ms': "
	        "must be at most 600000 ms\n"
	        "4 POST /impair refused, nothing changed: line 3: invalid --rate 'fast': "
	        "expected bits/s with k, m or g (10m = 10 Mbit/s), then [@P]\n"
	        "4 POST /impair refused, nothing changed: --no-such is not an impairment\n"
	        "4 POST /impair refused, nothing changed: the body has a NUL byte at "
	        "offset 7\n");
	cr_assert_eq(echo_ten(ep.ts.port, back), 4, "a refused POST changed the set");

	/* Another set without --seed keeps the seed; then an empty body clears. */
	POST_IMPAIR(&ep, "--close-after 7\r\n", r);
	expect_text(
	        r, "HTTP/1.1 200 OK",
	        "impairments for new sessions (open ones keep theirs): --close-after 7 --seed 42 "
	        "(replay with --seed 42)\n");
	cr_assert_eq(echo_ten(ep.ts.port, back), 7);
	POST_IMPAIR(&ep, "", r);
	expect_text(r, "HTTP/1.1 200 OK",
	            "impairments for new sessions (open ones keep theirs): none --seed 42 (replay "
	            "with --seed 42)\n");
	expect_impair(&ep, "impairments: none --seed 42 (replay with --seed 42)\n");
	cr_assert_eq(echo_ten(ep.ts.port, back), 10, "an empty body did not clear the set");
	endpoint_stop(&ep);
	free(r);
}

/* A delay POSTed: a new session's echo comes no sooner than it. */
Test(metrics, impair_post_delay, .timeout = 60)
{
	struct response *r = malloc(sizeof(*r));
	unsigned char back[64];
	struct endpoint ep;
	uint64_t t0, took;

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	POST_IMPAIR(&ep, "--delay 300ms --seed 9", r);
	expect_text(r, "HTTP/1.1 200 OK",
	            "impairments for new sessions (open ones keep theirs): --delay 300ms --seed 9 "
	            "(replay with --seed 9)\n");
	t0 = now_ms();
	cr_assert_eq(echo_ten(ep.ts.port, back), 10);
	took = now_ms() - t0;
	cr_assert_geq(took, 300, "the echo took %" PRIu64 " ms, under the 300 ms delay", took);
	endpoint_stop(&ep);
	free(r);
}

/* What /impair refuses, with the exact status line and text. */
Test(metrics, impair_refusals)
{
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	char v[64], body[16385];

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	POST_IMPAIR(&ep, "--close-after 4 --seed 1", r);
	expect_response(r, "HTTP/1.1 200 OK");

	request(&ep, "POST /impair HTTP/1.1\r\nHost: x\r\n\r\n--delay 5ms", r);
	expect_text(r, "HTTP/1.1 411 Length Required", "POST /impair needs a Content-Length\n");
	request(&ep,
	        "POST /impair HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
	        "b\r\n--delay 5ms\r\n0\r\n\r\n",
	        r);
	expect_text(r, "HTTP/1.1 411 Length Required",
	            "POST /impair needs a Content-Length (chunked bodies are not read)\n");
	memset(body, ' ', sizeof(body));
	post_impair(&ep, body, sizeof(body), r);
	expect_text(r, "HTTP/1.1 413 Content Too Large",
	            "POST /impair takes a body of at most 16384 bytes, not 16385\n");
	request(&ep,
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: "
	        "99999999999999999999999\r\n\r\n",
	        r);
	expect_text(r, "HTTP/1.1 413 Content Too Large",
	            "POST /impair takes a body of at most 16384 bytes\n");
	/* The largest body taken: blanks, then a flag. */
	memcpy(body + sizeof(body) - 1 - 11, "--delay 5ms", 11);
	post_impair(&ep, body, sizeof(body) - 1, r);
	expect_text(r, "HTTP/1.1 200 OK",
	            "impairments for new sessions (open ones keep theirs): --delay 5ms --seed 1 "
	            "(replay with --seed 1)\n");
	POST_IMPAIR(&ep, "--close-after 4", r);
	expect_response(r, "HTTP/1.1 200 OK");

	static const char *const malformed[] = {
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: 5x\r\n\r\n",
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n",
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n",
	};
	for (size_t i = 0; i < sizeof(malformed) / sizeof(malformed[0]); i++) {
		request(&ep, malformed[i], r);
		expect_text(r, "HTTP/1.1 400 Bad Request", "400 Bad Request\n");
	}
	/* The same length twice is one length; spaces around it are allowed. */
	request(&ep,
	        "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length:  0 \r\nContent-Length: "
	        "0\r\n\r\n",
	        r);
	expect_response(r, "HTTP/1.1 200 OK");
	POST_IMPAIR(&ep, "--close-after 4", r);
	expect_response(r, "HTTP/1.1 200 OK");

	request(&ep, "PUT /impair HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 405 Method Not Allowed");
	cr_assert_str_eq(header(r, "Allow", v, sizeof(v)), "GET, HEAD, POST");
	request(&ep, "DELETE /impair HTTP/1.1\r\nHost: x\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 405 Method Not Allowed");
	cr_assert_str_eq(header(r, "Allow", v, sizeof(v)), "GET, HEAD, POST");
	request(&ep, "POST /impair/x HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", r);
	expect_response(r, "HTTP/1.1 404 Not Found");

	/* HEAD: GET's headers, no body. */
	request(&ep, "HEAD /impair HTTP/1.1\r\nHost: x\r\n\r\n", r);
	cr_assert_str_eq(r->status, "HTTP/1.1 200 OK");
	cr_assert_eq(r->body_len, 0);
	cr_assert_eq(strtoull(header(r, "Content-Length", v, sizeof(v)), NULL, 10),
	             strlen("impairments: --close-after 4 --seed 1 (replay with --seed 1)\n"));
	/* None of these changed anything. */
	expect_impair(&ep, "impairments: --close-after 4 --seed 1 (replay with --seed 1)\n");
	endpoint_stop(&ep);
	free(r);
}

/*
 * A body that comes in pieces is read as it comes (after a 100 Continue for a
 * client that asks); one that ends early is a 400; one that stalls holds its
 * slot, not the endpoint, until the deadline's 408. Nothing changes but for
 * the whole body.
 */
Test(metrics, impair_body_in_pieces, .timeout = 60)
{
	static const char head[] = "POST /impair HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
	                           "Content-Length: 24\r\n\r\n";
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	static const char part[] = "POST /impair HTTP/1.1\r\nHost: x\r\nContent-Length: 20\r\n\r\n"
	                           "--delay";
	struct response *r = malloc(sizeof(*r));
	struct endpoint ep;
	char buf[4096];
	int one = 1, fd, stalled;
	size_t n;

	endpoint_start(&ep, "tcp://127.0.0.1:0");
	POST_IMPAIR(&ep, "--seed 3", r);
	expect_response(r, "HTTP/1.1 200 OK");

	/* Expect: 100-continue, then the body a few bytes at a time. */
	fd = ep_connect(&ep);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	send_all(fd, head, sizeof(head) - 1);
	cr_assert_eq(recv(fd, buf, sizeof(cont) - 1, MSG_WAITALL), (ssize_t)sizeof(cont) - 1);
	cr_assert(memcmp(buf, cont, sizeof(cont) - 1) == 0, "%.*s", (int)sizeof(cont) - 1, buf);
	for (const char *p = "--close-after 5\n--seed 3"; *p; p += 3)
		send_all(fd, p, strlen(p) < 3 ? strlen(p) : 3);
	n = read_to_eof(fd, buf, sizeof(buf));
	close(fd);
	cr_assert(strstr(buf, "\r\n\r\nimpairments for new sessions (open ones keep theirs): "
	                      "--close-after 5 --seed 3 (replay with --seed 3)\n") != NULL,
	          "%zu: %s", n, buf);

	/* Ends early: told how much came, and nothing changes. */
	fd = ep_connect(&ep);
	send_all(fd, part, sizeof(part) - 1);
	shutdown(fd, SHUT_WR);
	n = read_to_eof(fd, buf, sizeof(buf));
	close(fd);
	cr_assert(strncmp(buf, "HTTP/1.1 400 Bad Request\r\n", 26) == 0, "%zu: %s", n, buf);
	cr_assert(strstr(buf, "\r\n\r\nthe body ended after 7 of its 20 bytes (Content-Length); "
	                      "nothing changed\n") != NULL,
	          "%s", buf);

	/* Stalls mid-body: the endpoint answers others meanwhile. */
	stalled = ep_connect(&ep);
	send_all(stalled, part, sizeof(part) - 1);
	expect_impair(&ep, "impairments: --close-after 5 --seed 3 (replay with --seed 3)\n");
	expect_held(stalled);
	n = read_to_eof(stalled, buf, sizeof(buf));
	cr_assert(strncmp(buf, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0, "%zu: %s", n, buf);
	close(stalled);
	expect_impair(&ep, "impairments: --close-after 5 --seed 3 (replay with --seed 3)\n");
	endpoint_stop(&ep);
	free(r);
}
