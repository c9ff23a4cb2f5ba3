// SPDX-License-Identifier: MIT
/* rebound-bench option parsing: good values, bad values and the exact error text. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "opts.h"

static struct rbb_opts o;
static char err[512];

#define ARGC(a) ((int)(sizeof(a) / sizeof((a)[0])) - 1)

/* Parses a NULL-terminated argument list after the program name. */
#define PARSE(...)                                                                                 \
	({                                                                                         \
		const char *argv_[] = {"rebound-bench", __VA_ARGS__, NULL};                        \
		err[0] = '\0';                                                                     \
		rbb_opts_parse(&o, ARGC(argv_), (char **)argv_, err, sizeof(err));                 \
	})

#define BAD(msg, ...)                                                                              \
	do {                                                                                       \
		cr_assert_eq(PARSE(__VA_ARGS__), -EINVAL, "accepted: " #__VA_ARGS__);              \
		cr_assert_str_eq(err, msg);                                                        \
	} while (0)

Test(opts, defaults)
{
	cr_assert_eq(PARSE("tcp://127.0.0.1:7"), 0, "%s", err);
	cr_assert_eq(o.connections, 1);
	cr_assert_eq(o.threads, 1);
	cr_assert_eq(o.active, 1);
	cr_assert_eq(o.size, 64);
	cr_assert_eq(o.depth, 1);
	cr_assert_float_eq(o.duration, 10.0, 1e-9);
	cr_assert_float_eq(o.warmup, 0.0, 1e-9);
	cr_assert_float_eq(o.stall_timeout, 5.0, 1e-9);
	cr_assert_eq(o.messages, 0);
	cr_assert_float_eq(o.rate, 0.0, 1e-9);
	cr_assert_not(o.json);
	cr_assert_null(o.hgrm);
	cr_assert_eq(o.target.proto, RBB_PROTO_TCP);
}

Test(opts, every_option)
{
	cr_assert_eq(PARSE("-c", "10000", "--threads", "4", "--active", "10", "-s", "64K",
	                   "--depth", "16", "-d", "1.5s", "--warmup", "500ms", "--rate", "2500.5",
	                   "--stall-timeout", "2", "--interval", "1", "--json", "--hgrm",
	                   "out.hgrm", "--seed", "99", "--server-pid", "1", "tcp://127.0.0.1:9000"),
	             0, "%s", err);
	cr_assert_eq(o.connections, 10000);
	cr_assert_eq(o.threads, 4);
	cr_assert_eq(o.active, 10);
	cr_assert_eq(o.size, 65536);
	cr_assert_eq(o.depth, 16);
	cr_assert_float_eq(o.duration, 1.5, 1e-9);
	cr_assert_float_eq(o.warmup, 0.5, 1e-9);
	cr_assert_float_eq(o.rate, 2500.5, 1e-9);
	cr_assert_float_eq(o.stall_timeout, 2.0, 1e-9);
	cr_assert_float_eq(o.interval, 1.0, 1e-9);
	cr_assert(o.json);
	cr_assert_str_eq(o.hgrm, "out.hgrm");
	cr_assert_eq(o.seed, 99);
	cr_assert_eq(o.server_pid, 1);
	cr_assert_str_eq(o.url, "tcp://127.0.0.1:9000");
}

Test(opts, units)
{
	cr_assert_eq(PARSE("-s", "1M", "-d", "2m", "unix:/x"), 0, "%s", err);
	cr_assert_eq(o.size, 1048576);
	cr_assert_float_eq(o.duration, 120.0, 1e-9);
	cr_assert_eq(PARSE("-s", "1", "-n", "2k", "unix:/x"), 0, "%s", err);
	cr_assert_eq(o.size, 1);
	cr_assert_eq(o.messages, 2000);
	/* -n alone is still bounded in time. */
	cr_assert_float_eq(o.duration, 60.0, 1e-9);
	cr_assert_eq(PARSE("-s", "4KiB", "unix:/x"), 0, "%s", err);
	cr_assert_eq(o.size, 4096);
}

Test(opts, threads_never_exceed_connections)
{
	cr_assert_eq(PARSE("-c", "3", "--threads", "8", "unix:/x"), 0, "%s", err);
	cr_assert_eq(o.threads, 3);
}

Test(opts, targets)
{
	struct sockaddr_in *s4 = (struct sockaddr_in *)&o.target.addr;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&o.target.addr;
	struct sockaddr_un *sun = (struct sockaddr_un *)&o.target.addr;

	cr_assert_eq(PARSE("tcp://127.0.0.1:4242"), 0, "%s", err);
	cr_assert_eq(s4->sin_family, AF_INET);
	cr_assert_eq(ntohs(s4->sin_port), 4242);
	cr_assert_eq(s4->sin_addr.s_addr, htonl(INADDR_LOOPBACK));

	cr_assert_eq(PARSE("tcp://[::1]:7"), 0, "%s", err);
	cr_assert_eq(s6->sin6_family, AF_INET6);
	cr_assert_eq(ntohs(s6->sin6_port), 7);
	cr_assert(IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr));

	cr_assert_eq(PARSE("-s", "65507", "udp://127.0.0.1:7"), 0, "%s", err);
	cr_assert_eq(o.target.proto, RBB_PROTO_UDP);
	cr_assert_eq(ntohs(s4->sin_port), 7);

	cr_assert_eq(PARSE("unix:/tmp/echo.sock"), 0, "%s", err);
	cr_assert_eq(o.target.proto, RBB_PROTO_UNIX);
	cr_assert_str_eq(sun->sun_path, "/tmp/echo.sock");

	cr_assert_eq(PARSE("unix:@echo"), 0, "%s", err);
	cr_assert_eq(sun->sun_path[0], '\0');
	cr_assert_eq(memcmp(sun->sun_path + 1, "echo", 4), 0);
	cr_assert_eq(o.target.addrlen, offsetof(struct sockaddr_un, sun_path) + 5);
}

Test(opts, bad_numbers)
{
	BAD("invalid --connections '0': expected an integer from 1 to 1000000", "-c", "0",
	    "unix:/x");
	BAD("invalid --connections 'ten': expected an integer from 1 to 1000000", "-c", "ten",
	    "unix:/x");
	BAD("invalid --connections '-1': expected an integer from 1 to 1000000", "--connections=-1",
	    "unix:/x");
	BAD("invalid --size '0': expected an integer from 1 to 1048576", "-s", "0", "unix:/x");
	BAD("invalid --size '2M': expected an integer from 1 to 1048576", "-s", "2M", "unix:/x");
	BAD("invalid --size '12X': expected an integer from 1 to 1048576", "-s", "12X", "unix:/x");
	BAD("invalid --depth '5000': expected an integer from 1 to 4096", "--depth", "5000",
	    "unix:/x");
	BAD("invalid --threads '0': expected an integer from 1 to 256", "--threads", "0",
	    "unix:/x");
	BAD("invalid --messages '0': expected an integer from 1 to 9223372036854775807", "-n", "0",
	    "unix:/x");
	BAD("invalid --rate '-5': expected messages per second, above 0", "--rate", "-5",
	    "unix:/x");
	BAD("invalid --rate 'fast': expected messages per second, above 0", "--rate", "fast",
	    "unix:/x");
	BAD("invalid --server-pid '0': expected an integer from 1 to 4194304", "--server-pid", "0",
	    "unix:/x");
	BAD("invalid --active '5': more than --connections (2)", "-c", "2", "--active", "5",
	    "unix:/x");
}

Test(opts, bad_times)
{
	BAD("invalid --duration '0': expected a time such as 10, 1.5s or 500ms, above 0", "-d", "0",
	    "unix:/x");
	BAD("invalid --duration '5 days': expected a time such as 10, 1.5s or 500ms, above 0", "-d",
	    "5 days", "unix:/x");
	BAD("invalid --warmup '-1': expected a time such as 10, 1.5s or 500ms", "--warmup", "-1",
	    "unix:/x");
	BAD("invalid --stall-timeout '0ms': expected a time such as 10, 1.5s or 500ms, above 0",
	    "--stall-timeout", "0ms", "unix:/x");
	BAD("--warmup works with -d only, not with -n", "-n", "10", "--warmup", "1", "unix:/x");
}

Test(opts, bad_flags_and_targets)
{
	BAD("unknown option '--bogus'", "--bogus", "unix:/x");
	BAD("unknown option '-x'", "-x", "unix:/x");
	BAD("option '--connections' needs a value", "unix:/x", "-c");
	BAD("option '--depth' needs a value", "unix:/x", "--depth");
	BAD("missing target URL (tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT or unix:PATH)",
	    "-c", "1");
	BAD("unexpected argument 'extra'", "unix:/x", "extra");
	BAD("invalid --size '65508': a udp datagram carries at most 65507 bytes", "-s", "65508",
	    "udp://127.0.0.1:7");
	BAD("invalid target 'http://x': expected tcp://HOST:PORT, tcp://[V6]:PORT, udp://HOST:PORT "
	    "or unix:PATH",
	    "http://x");
	BAD("invalid target 'tcp://127.0.0.1:99999': bad port '99999'", "tcp://127.0.0.1:99999");
	BAD("invalid target 'tcp://127.0.0.1': expected tcp://HOST:PORT, tcp://[V6]:PORT, "
	    "udp://HOST:PORT or unix:PATH",
	    "tcp://127.0.0.1");
	BAD("invalid target 'tcp://::1:80': put an IPv6 address in brackets", "tcp://::1:80");
	BAD("invalid target 'unix:': socket path must be 1 to 107 bytes", "unix:");
}

Test(opts, help_and_version)
{
	cr_assert_eq(PARSE("--help"), 0);
	cr_assert(o.help);
	cr_assert_eq(PARSE("--version"), 0);
	cr_assert(o.version);
	cr_assert_not_null(strstr(rbb_usage, "--stall-timeout"));
}

/* Issue 11: --expect none|chargen, one-way streams. */
Test(opts, expect_one_way_modes)
{
	cr_assert_eq(PARSE("tcp://127.0.0.1:7"), 0, "%s", err);
	cr_assert_eq(o.expect, RBB_EXPECT_ECHO);
	cr_assert_eq(PARSE("--expect", "none", "tcp://127.0.0.1:9"), 0, "%s", err);
	cr_assert_eq(o.expect, RBB_EXPECT_NONE);
	cr_assert_eq(o.size, 65536, "one-way modes send or receive 64 KiB per call by default");
	cr_assert_eq(PARSE("--expect", "chargen", "-s", "1000", "-n", "5", "unix:/x"), 0, "%s",
	             err);
	cr_assert_eq(o.expect, RBB_EXPECT_CHARGEN);
	cr_assert_eq(o.size, 1000);
	cr_assert_eq(o.messages, 5);
	cr_assert_eq(PARSE("--expect", "echo", "tcp://127.0.0.1:7"), 0, "%s", err);
	cr_assert_eq(o.size, 64);
	cr_assert_str_eq(rbb_expect_name(RBB_EXPECT_NONE), "none");
	cr_assert_str_eq(rbb_expect_name(RBB_EXPECT_CHARGEN), "chargen");
	cr_assert_str_eq(rbb_expect_name(RBB_EXPECT_ECHO), "echo");
}

Test(opts, expect_refusals)
{
	BAD("invalid --expect 'discard': expected echo, none or chargen", "--expect", "discard",
	    "tcp://127.0.0.1:7");
	BAD("invalid target 'udp://127.0.0.1:9': --expect none needs tcp:// or unix:", "--expect",
	    "none", "udp://127.0.0.1:9");
	BAD("--expect chargen takes none of --crr, --active, --depth, --rate", "--expect",
	    "chargen", "--depth", "1", "tcp://127.0.0.1:7");
	BAD("--expect none takes none of --crr, --active, --depth, --rate", "--expect", "none",
	    "--crr", "tcp://127.0.0.1:7");
	BAD("--expect none takes none of --crr, --active, --depth, --rate", "--expect", "none",
	    "--active", "1", "tcp://127.0.0.1:7");
	BAD("--expect chargen takes none of --crr, --active, --depth, --rate", "--expect",
	    "chargen", "--rate", "10", "tcp://127.0.0.1:7");
}
