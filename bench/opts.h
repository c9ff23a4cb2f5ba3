/* SPDX-License-Identifier: MIT */
/* rebound-bench command line: options and target URLs. */
#ifndef RBB_OPTS_H
#define RBB_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#define RBB_MAX_CONNECTIONS 1000000u
#define RBB_MAX_THREADS     256u
#define RBB_MAX_SIZE        (1024u * 1024u)
#define RBB_MAX_DEPTH       4096u
#define RBB_MAX_SECONDS     86400.0
#define RBB_URL_MAX         256
#define RBB_MAX_DATAGRAM    65507u /* largest UDP payload over IPv4 */

enum rbb_proto {
	RBB_PROTO_TCP,
	RBB_PROTO_UDP,
	RBB_PROTO_UNIX,
};

/* What the server does with the bytes (--expect). */
enum rbb_expect {
	RBB_EXPECT_ECHO,    /* sends every byte back: verified against what was sent */
	RBB_EXPECT_NONE,    /* discards (RFC 863): send only, count what its TCP acknowledged */
	RBB_EXPECT_CHARGEN, /* character generator (RFC 864): receive only, verify the pattern */
};

struct rbb_target {
	enum rbb_proto proto;
	struct sockaddr_storage addr;
	socklen_t addrlen;
};

struct rbb_opts {
	const char *url;
	struct rbb_target target;
	unsigned connections; /* -c */
	unsigned threads;     /* --threads, at most connections */
	unsigned active;      /* --active: connections that send; the rest stay idle */
	size_t size;          /* -s message size in bytes */
	unsigned depth;       /* --depth messages in flight per connection */
	double duration;      /* -d seconds; with -n, the time limit */
	double warmup;        /* --warmup seconds before measuring */
	uint64_t messages;    /* -n total messages, 0 = run for -d */
	double rate;          /* --rate msgs/s in total, 0 = closed loop */
	double stall_timeout; /* --stall-timeout seconds */
	double interval;      /* --interval seconds, 0 = no progress lines */
	pid_t server_pid;     /* --server-pid, 0 = none */
	bool cpu_system;      /* --cpu-system: whole-machine busy time from /proc/stat */
	bool crr;             /* --crr: connect, send, receive, close per transaction */
	bool tcp_info;        /* --tcp-info: sample TCP_INFO per connection */
	bool strict;          /* --strict: falling behind --rate by over 5% fails */
	bool json;
	const char *hgrm; /* --hgrm FILE */
	uint64_t seed;
	enum rbb_expect expect; /* --expect echo|none|chargen */
	bool help;
	bool version;
};

/*
 * Parses a target URL: tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT (or [V6]),
 * unix:PATH (unix:@NAME for the abstract namespace). Returns 0, or -EINVAL
 * with a one-line reason in @err.
 */
int rbb_target_parse(struct rbb_target *t, const char *url, char *err, size_t errlen);

/*
 * Parses argv into @o (defaults first). Returns 0, or -EINVAL with a
 * one-line message naming the bad value in @err. -h and --version only set
 * o->help / o->version.
 */
int rbb_opts_parse(struct rbb_opts *o, int argc, char **argv, char *err, size_t errlen);

/* "echo", "none" or "chargen". */
const char *rbb_expect_name(enum rbb_expect e);

/* The --help text. */
extern const char rbb_usage[];

#endif
