/* SPDX-License-Identifier: MIT */
/*
 * Impairments as flags (issue 13): the syntax of each flag's value, the
 * text of an --impair-file, a description in the same syntax for the
 * start-up line, and the check of a set against its limits (rb_limits.h),
 * which rb_config_check and rb_server_set_impair call. What the engine does
 * with them is impair.c's.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "impair.h"
#include "rb_limits.h"

enum kind {
	K_DELAY,
	K_RATE,
	K_SLICE,
	K_RESET,
	K_CLOSE,
	K_STALL,
	K_ACCEPT,
	K_REFUSE,
	K_LOSS,
	K_DUP,
	K_CORRUPT,
	K_SEED
};
enum dir { D_NONE, D_BOTH, D_UP, D_DOWN };

static const struct flag {
	const char *name;
	enum kind kind;
	enum dir dir;
} flags[] = {
        {"delay", K_DELAY, D_BOTH},
        {"up-delay", K_DELAY, D_UP},
        {"down-delay", K_DELAY, D_DOWN},
        {"rate", K_RATE, D_BOTH},
        {"up-rate", K_RATE, D_UP},
        {"down-rate", K_RATE, D_DOWN},
        {"slice", K_SLICE, D_BOTH},
        {"up-slice", K_SLICE, D_UP},
        {"down-slice", K_SLICE, D_DOWN},
        {"reset-after", K_RESET, D_BOTH},
        {"up-reset-after", K_RESET, D_UP},
        {"down-reset-after", K_RESET, D_DOWN},
        {"close-after", K_CLOSE, D_BOTH},
        {"up-close-after", K_CLOSE, D_UP},
        {"down-close-after", K_CLOSE, D_DOWN},
        {"stall-after", K_STALL, D_BOTH},
        {"up-stall-after", K_STALL, D_UP},
        {"down-stall-after", K_STALL, D_DOWN},
        {"accept-delay", K_ACCEPT, D_NONE},
        {"refuse", K_REFUSE, D_NONE},
        {"loss", K_LOSS, D_NONE},
        {"duplicate", K_DUP, D_NONE},
        {"corrupt", K_CORRUPT, D_NONE},
        {"seed", K_SEED, D_NONE},
};

#define N_FLAGS (sizeof(flags) / sizeof(flags[0]))

const char *rb_impair_flag(size_t i)
{
	return i < N_FLAGS ? flags[i].name : NULL;
}

/* Digits into *out (stops at the first non-digit); false if none or too large. */
static bool digits(const char **p, uint64_t *out)
{
	uint64_t v = 0;
	const char *s = *p;

	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*p = s;
	*out = v;
	return true;
}

/* A duration in [s, end): N, Nms or Ns; milliseconds into *out. */
static bool parse_ms(const char *s, const char *end, unsigned *out)
{
	uint64_t v;
	const char *p = s;

	if (!digits(&p, &v))
		return false;
	if (end - p == 2 && strncmp(p, "ms", 2) == 0)
		p += 2;
	else if (end - p == 1 && *p == 's') {
		if (v > UINT32_MAX / 1000)
			return false;
		v *= 1000;
		p++;
	}
	if (p != end || v > UINT32_MAX)
		return false;
	*out = (unsigned)v;
	return true;
}

/* A probability in [s, end): 0.25, 1, 25% or 2.5%; millionths into *out
 * (may exceed RB_PROB_ONE: the check says so). */
static bool parse_prob(const char *s, const char *end, unsigned *out)
{
	uint64_t ip = 0, frac = 0, scale = 1000000;
	const char *p = s;
	bool pct;

	if (p < end && *p >= '0' && *p <= '9' && !digits(&p, &ip))
		return false;
	if (p < end && *p == '.') {
		p++;
		if (p >= end || *p < '0' || *p > '9')
			return false;
		for (; p < end && *p >= '0' && *p <= '9'; p++) {
			if (scale >= 10) {
				scale /= 10;
				frac += (uint64_t)(*p - '0') * scale;
			}
		}
	} else if (p == s) {
		return false;
	}
	pct = p < end && *p == '%';
	if (pct)
		p++;
	if (p != end || ip > 1000000)
		return false;
	ip = ip * 1000000 + frac;
	if (pct)
		ip /= 100;
	*out = ip > UINT32_MAX ? UINT32_MAX : (unsigned)ip;
	return true;
}

/* N in [s, end) with an optional k, m or g suffix: unit, unit^2, unit^3. */
static bool parse_scaled(const char *s, const char *end, uint64_t unit, uint64_t *out)
{
	uint64_t v, mul = 1;
	const char *p = s;

	if (!digits(&p, &v))
		return false;
	if (end - p == 1) {
		switch (*p) {
		case 'g':
		case 'G':
			mul *= unit;
			/* fall through */
		case 'm':
		case 'M':
			mul *= unit;
			/* fall through */
		case 'k':
		case 'K':
			mul *= unit;
			break;
		default:
			return false;
		}
		p++;
	}
	if (p != end || v > UINT64_MAX / mul)
		return false;
	*out = v * mul;
	return true;
}

/* A byte count or size in [s, end): N with k, m or g (binary). */
static bool parse_bytes(const char *s, const char *end, uint64_t *out)
{
	return parse_scaled(s, end, 1024, out);
}

/* Bits per second in [s, end): N with k, m or g (decimal, as link speeds). */
static bool parse_rate(const char *s, const char *end, uint64_t *out)
{
	return parse_scaled(s, end, 1000, out);
}

static int bad(char *err, size_t errlen, const char *flag, const char *value, const char *why)
{
	snprintf(err, errlen, "invalid --%s '%s': %s", flag, value, why);
	return -EINVAL;
}

/* One flow's share of a flag. */
static bool set_flow(struct rb_impair_flow *f, enum kind k, const char *v, const char *end,
                     unsigned p)
{
	const char *sep;
	uint64_t n;

	switch (k) {
	case K_DELAY:
		sep = memchr(v, '~', (size_t)(end - v));
		if (!parse_ms(v, sep ? sep : end, &f->delay_ms))
			return false;
		f->jitter_ms = 0;
		if (sep && !parse_ms(sep + 1, end, &f->jitter_ms))
			return false;
		f->delay_p = p;
		return true;
	case K_RATE:
		if (!parse_rate(v, end, &f->rate_bps))
			return false;
		f->rate_p = p;
		return true;
	case K_SLICE:
		sep = memchr(v, '/', (size_t)(end - v));
		if (!parse_bytes(v, sep ? sep : end, &n) || n > UINT32_MAX)
			return false;
		f->slice_size = (unsigned)n;
		f->slice_ms = 0;
		if (sep && !parse_ms(sep + 1, end, &f->slice_ms))
			return false;
		f->slice_p = p;
		return true;
	case K_RESET:
		f->reset_p = p;
		return parse_bytes(v, end, &f->reset_after);
	case K_CLOSE:
		f->close_p = p;
		return parse_bytes(v, end, &f->close_after);
	case K_STALL:
		f->stall_p = p;
		return parse_bytes(v, end, &f->stall_after);
	default:
		return false;
	}
}

static const char *syntax(enum kind k)
{
	switch (k) {
	case K_DELAY:
		return "expected D[~J][@P]: milliseconds (10, 10ms, 2s), then a probability such "
		       "as 0.5 or 50%";
	case K_RATE:
		return "expected bits/s with k, m or g (10m = 10 Mbit/s), then [@P]";
	case K_SLICE:
		return "expected SIZE[/D][@P]: bytes (1000, 16k), milliseconds between writes";
	case K_RESET:
	case K_CLOSE:
	case K_STALL:
		return "expected a byte count (0, 1000, 64k), then [@P]";
	case K_ACCEPT:
		return "expected D[@P]: milliseconds (10, 10ms, 2s)";
	case K_SEED:
		return "expected a whole number";
	default:
		return "expected a probability such as 0.1 or 10%";
	}
}

int rb_impair_set(struct rb_impair *imp, const char *flag, const char *value, char *err,
                  size_t errlen)
{
	char dummy[8];
	const struct flag *fl = NULL;
	const char *end, *at;
	unsigned p = RB_PROB_ONE;
	uint64_t seed;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	for (size_t i = 0; flag && i < N_FLAGS; i++)
		if (strcmp(flag, flags[i].name) == 0)
			fl = &flags[i];
	if (!fl) {
		snprintf(err, errlen, "--%s is not an impairment", flag ? flag : "(null)");
		return -ENOENT;
	}
	if (!value || !*value)
		return bad(err, errlen, fl->name, value ? value : "", syntax(fl->kind));
	end = value + strlen(value);
	at = strrchr(value, '@');
	if (at) {
		/* The share of sessions: not for what is already a probability. */
		if (fl->kind == K_REFUSE || fl->kind == K_LOSS || fl->kind == K_DUP ||
		    fl->kind == K_CORRUPT || fl->kind == K_SEED)
			return bad(err, errlen, fl->name, value, syntax(fl->kind));
		if (!parse_prob(at + 1, end, &p))
			return bad(err, errlen, fl->name, value, syntax(fl->kind));
		end = at;
	}
	switch (fl->kind) {
	case K_ACCEPT:
		if (!parse_ms(value, end, &imp->accept_delay_ms))
			return bad(err, errlen, fl->name, value, syntax(fl->kind));
		imp->accept_delay_p = p;
		return 0;
	case K_REFUSE:
		return parse_prob(value, end, &imp->refuse_p)
		               ? 0
		               : bad(err, errlen, fl->name, value, syntax(fl->kind));
	case K_LOSS:
		return parse_prob(value, end, &imp->loss_p)
		               ? 0
		               : bad(err, errlen, fl->name, value, syntax(fl->kind));
	case K_DUP:
		return parse_prob(value, end, &imp->duplicate_p)
		               ? 0
		               : bad(err, errlen, fl->name, value, syntax(fl->kind));
	case K_CORRUPT:
		return parse_prob(value, end, &imp->corrupt_p)
		               ? 0
		               : bad(err, errlen, fl->name, value, syntax(fl->kind));
	case K_SEED: {
		const char *q = value;
		if (!digits(&q, &seed) || q != end)
			return bad(err, errlen, fl->name, value, syntax(fl->kind));
		imp->seed = seed;
		imp->seed_set = true;
		return 0;
	}
	default:
		break;
	}
	if ((fl->dir == D_BOTH || fl->dir == D_UP) && !set_flow(&imp->up, fl->kind, value, end, p))
		return bad(err, errlen, fl->name, value, syntax(fl->kind));
	if ((fl->dir == D_BOTH || fl->dir == D_DOWN) &&
	    !set_flow(&imp->down, fl->kind, value, end, p))
		return bad(err, errlen, fl->name, value, syntax(fl->kind));
	return 0;
}

int rb_impair_parse(struct rb_impair *imp, const char *text, char *err, size_t errlen)
{
	char dummy[8], name[64], value[256];
	const char *p = text;
	unsigned line = 1;

	if (!err) {
		err = dummy;
		errlen = sizeof(dummy);
	}
	*imp = (struct rb_impair){0};
	while (p && *p) {
		size_t n;
		int rc;

		/* Blanks, newlines and comments. */
		if (*p == '\n') {
			line++;
			p++;
			continue;
		}
		if (*p == ' ' || *p == '\t' || *p == '\r') {
			p++;
			continue;
		}
		if (*p == '#') {
			p += strcspn(p, "\n");
			continue;
		}
		n = strcspn(p, " \t\r\n=");
		if (n >= sizeof(name) || n <= 2 || p[0] != '-' || p[1] != '-') {
			snprintf(err, errlen,
			         "line %u: expected a flag such as --delay, got '%.*s'", line,
			         (int)(n < 40 ? n : 40), p);
			return -EINVAL;
		}
		memcpy(name, p + 2, n - 2);
		name[n - 2] = '\0';
		p += n;
		p += strspn(p, " \t=");
		n = strcspn(p, " \t\r\n#");
		if (n == 0 || n >= sizeof(value)) {
			snprintf(err, errlen, "line %u: --%s needs a value", line, name);
			return -EINVAL;
		}
		memcpy(value, p, n);
		value[n] = '\0';
		p += n;
		rc = rb_impair_set(imp, name, value, err, errlen);
		if (rc < 0) {
			char why[256];
			snprintf(why, sizeof(why), "%s", err);
			snprintf(err, errlen, "line %u: %s", line, why);
			return -EINVAL;
		}
	}
	return 0;
}

static bool flow_any(const struct rb_impair_flow *f)
{
	return f->delay_p || f->rate_p || f->slice_p || f->reset_p || f->close_p || f->stall_p;
}

bool rb__impair_flow_any(const struct rb_impair_flow *f)
{
	return flow_any(f);
}

bool rb__impair_session_any(const struct rb_impair *imp)
{
	return flow_any(&imp->up) || flow_any(&imp->down) || imp->accept_delay_p || imp->refuse_p;
}

bool rb__impair_udp_any(const struct rb_impair *imp)
{
	return imp->loss_p || imp->duplicate_p || imp->corrupt_p || imp->down.delay_p;
}

bool rb_impair_any(const struct rb_impair *imp)
{
	return rb__impair_session_any(imp) || rb__impair_udp_any(imp);
}

/* ---- describe: the flags that would make the same set ---- */

struct out {
	char *buf;
	size_t len, off;
};

static void put(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->off >= o->len)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->buf + o->off, o->len - o->off, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->off += (size_t)n;
}

/* "" for certainty, else "@0.25". */
static const char *share(unsigned p, char *buf, size_t len)
{
	if (p >= RB_PROB_ONE)
		return "";
	snprintf(buf, len, "@%u.%06u", p / RB_PROB_ONE, p % RB_PROB_ONE);
	/* Trailing zeros off: @0.250000 -> @0.25. */
	for (size_t n = strlen(buf); n > 3 && buf[n - 1] == '0'; n--)
		buf[n - 1] = '\0';
	return buf;
}

static const char *prob(unsigned p, char *buf, size_t len)
{
	share(p, buf, len);
	return p >= RB_PROB_ONE ? "1" : buf + 1;
}

static void describe_flow(struct out *o, const struct rb_impair_flow *f, const char *pre)
{
	char s[24];

	if (f->delay_p) {
		put(o, " --%sdelay %ums", pre, f->delay_ms);
		if (f->jitter_ms)
			put(o, "~%ums", f->jitter_ms);
		put(o, "%s", share(f->delay_p, s, sizeof(s)));
	}
	if (f->rate_p)
		put(o, " --%srate %" PRIu64 "%s", pre, f->rate_bps, share(f->rate_p, s, sizeof(s)));
	if (f->slice_p) {
		put(o, " --%sslice %u", pre, f->slice_size);
		if (f->slice_ms)
			put(o, "/%ums", f->slice_ms);
		put(o, "%s", share(f->slice_p, s, sizeof(s)));
	}
	if (f->reset_p)
		put(o, " --%sreset-after %" PRIu64 "%s", pre, f->reset_after,
		    share(f->reset_p, s, sizeof(s)));
	if (f->close_p)
		put(o, " --%sclose-after %" PRIu64 "%s", pre, f->close_after,
		    share(f->close_p, s, sizeof(s)));
	if (f->stall_p)
		put(o, " --%sstall-after %" PRIu64 "%s", pre, f->stall_after,
		    share(f->stall_p, s, sizeof(s)));
}

int rb_impair_describe(const struct rb_impair *imp, char *buf, size_t len)
{
	struct out o = {.buf = buf, .len = len};
	char s[24];

	if (len)
		buf[0] = '\0';
	if (memcmp(&imp->up, &imp->down, sizeof(imp->up)) == 0) {
		describe_flow(&o, &imp->down, "");
	} else {
		describe_flow(&o, &imp->up, "up-");
		describe_flow(&o, &imp->down, "down-");
	}
	if (imp->accept_delay_p)
		put(&o, " --accept-delay %ums%s", imp->accept_delay_ms,
		    share(imp->accept_delay_p, s, sizeof(s)));
	if (imp->refuse_p)
		put(&o, " --refuse %s", prob(imp->refuse_p, s, sizeof(s)));
	if (imp->loss_p)
		put(&o, " --loss %s", prob(imp->loss_p, s, sizeof(s)));
	if (imp->duplicate_p)
		put(&o, " --duplicate %s", prob(imp->duplicate_p, s, sizeof(s)));
	if (imp->corrupt_p)
		put(&o, " --corrupt %s", prob(imp->corrupt_p, s, sizeof(s)));
	if (o.off == 0)
		put(&o, " none");
	if (imp->seed_set)
		put(&o, " --seed %" PRIu64, imp->seed);
	/* Without the leading blank. */
	if (len && o.off > 0) {
		size_t n = o.off < len ? o.off : len - 1;
		memmove(buf, buf + 1, n);
		buf[n - 1] = '\0';
	}
	return o.off > 0 ? (int)o.off - 1 : 0;
}

/* ---- the check ---- */

static int check_prob(char *err, size_t errlen, const char *flag, unsigned p)
{
	if (p <= RB_PROB_ONE)
		return 0;
	snprintf(err, errlen, "invalid %s probability: must be between 0 and 1 (0%% and 100%%)",
	         flag);
	return -EINVAL;
}

static int check_ms(char *err, size_t errlen, const char *flag, unsigned ms)
{
	if (ms <= RB_LIMIT_IMPAIR_MS_MAX)
		return 0;
	snprintf(err, errlen, "invalid %s '%ums': must be at most %u ms", flag, ms,
	         RB_LIMIT_IMPAIR_MS_MAX);
	return -EINVAL;
}

#define TRY(x)                                                                                     \
	do {                                                                                       \
		int rc_ = (x);                                                                     \
		if (rc_ < 0)                                                                       \
			return rc_;                                                                \
	} while (0)

static int check_flow(const struct rb_impair_flow *f, const char *pre, char *err, size_t errlen)
{
	char flag[40];

	snprintf(flag, sizeof(flag), "--%sdelay", pre);
	TRY(check_prob(err, errlen, flag, f->delay_p));
	if (f->delay_p) {
		TRY(check_ms(err, errlen, flag, f->delay_ms));
		TRY(check_ms(err, errlen, flag, f->jitter_ms));
	}
	snprintf(flag, sizeof(flag), "--%srate", pre);
	TRY(check_prob(err, errlen, flag, f->rate_p));
	if (f->rate_p &&
	    (f->rate_bps < RB_LIMIT_IMPAIR_RATE_MIN || f->rate_bps > RB_LIMIT_IMPAIR_RATE_MAX)) {
		snprintf(err, errlen,
		         "invalid %s '%" PRIu64 "': must be between %llu and %llu bits/s (1k to "
		         "100g)",
		         flag, f->rate_bps, RB_LIMIT_IMPAIR_RATE_MIN, RB_LIMIT_IMPAIR_RATE_MAX);
		return -EINVAL;
	}
	snprintf(flag, sizeof(flag), "--%sslice", pre);
	TRY(check_prob(err, errlen, flag, f->slice_p));
	if (f->slice_p) {
		if (f->slice_size < 1 || f->slice_size > RB_LIMIT_IMPAIR_SLICE_MAX) {
			snprintf(err, errlen,
			         "invalid %s '%u': SIZE must be between 1 and %u bytes", flag,
			         f->slice_size, RB_LIMIT_IMPAIR_SLICE_MAX);
			return -EINVAL;
		}
		TRY(check_ms(err, errlen, flag, f->slice_ms));
	}
	snprintf(flag, sizeof(flag), "--%sreset-after", pre);
	TRY(check_prob(err, errlen, flag, f->reset_p));
	snprintf(flag, sizeof(flag), "--%sclose-after", pre);
	TRY(check_prob(err, errlen, flag, f->close_p));
	snprintf(flag, sizeof(flag), "--%sstall-after", pre);
	TRY(check_prob(err, errlen, flag, f->stall_p));
	return 0;
}

int rb__impair_check(const struct rb_impair *imp, bool relay, bool echo, char *err, size_t errlen)
{
	bool same = memcmp(&imp->up, &imp->down, sizeof(imp->up)) == 0;

	TRY(check_flow(&imp->up, same ? "" : "up-", err, errlen));
	TRY(check_flow(&imp->down, same ? "" : "down-", err, errlen));
	TRY(check_prob(err, errlen, "--accept-delay", imp->accept_delay_p));
	if (imp->accept_delay_p)
		TRY(check_ms(err, errlen, "--accept-delay", imp->accept_delay_ms));
	TRY(check_prob(err, errlen, "--refuse", imp->refuse_p));
	TRY(check_prob(err, errlen, "--loss", imp->loss_p));
	TRY(check_prob(err, errlen, "--duplicate", imp->duplicate_p));
	TRY(check_prob(err, errlen, "--corrupt", imp->corrupt_p));
	if ((flow_any(&imp->up) || flow_any(&imp->down)) && !echo && !relay) {
		snprintf(err, errlen,
		         "byte impairments (--delay, --rate, --slice, --*-after) apply to echo and "
		         "relay sessions, not to --service discard, chargen or sockperf");
		return -EINVAL;
	}
	if (!relay && !same && flow_any(&imp->up)) {
		snprintf(err, errlen,
		         "--up-* impairments apply to a relay's client-to-upstream flow "
		         "(--forward); an echo has one flow: use the flag without up-");
		return -EINVAL;
	}
	return 0;
}

const char *rb__impair_first_flag(const struct rb_impair *imp)
{
	const struct rb_impair_flow *f = flow_any(&imp->down) ? &imp->down : &imp->up;

	if (f->delay_p)
		return "--delay";
	if (f->rate_p)
		return "--rate";
	if (f->slice_p)
		return "--slice";
	if (f->reset_p)
		return "--reset-after";
	if (f->close_p)
		return "--close-after";
	if (f->stall_p)
		return "--stall-after";
	if (imp->accept_delay_p)
		return "--accept-delay";
	if (imp->refuse_p)
		return "--refuse";
	if (imp->loss_p)
		return "--loss";
	if (imp->duplicate_p)
		return "--duplicate";
	return "--corrupt";
}
