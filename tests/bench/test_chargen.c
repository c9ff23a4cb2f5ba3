// SPDX-License-Identifier: MIT
/*
 * The RFC 864 pattern, checked against the RFC's own words rather than
 * against the generator: literal lines, the ring of 95 characters, CR LF,
 * the 7030-byte period, and the verifier's first differing byte.
 */
#include <criterion/criterion.h>
#include <string.h>

#include "chargen.h"

/* Line 0: characters numbered 0 ('\x20') to 71 ('g'), then CR LF. */
static const char line0[] = " !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                            "abcdefg\r\n";
/* Line 1 starts one character later and ends with 'h'. */
static const char line1[] = "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`a"
                            "bcdefgh\r\n";
/* Line 94 starts at '~' (number 94) and wraps round to ' ' (number 0) after it. */
static const char line94[] = "~ !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`"
                             "abcdef\r\n";

Test(chargen, literal_lines_from_the_rfc)
{
	uint8_t buf[74];

	cr_assert_eq(sizeof(line0) - 1, 74);
	cr_assert_eq(sizeof(line1) - 1, 74);
	cr_assert_eq(sizeof(line94) - 1, 74);
	rbb_chargen_fill(0, buf, 74);
	cr_assert_eq(memcmp(buf, line0, 74), 0, "line 0: %.74s", buf);
	rbb_chargen_fill(74, buf, 74);
	cr_assert_eq(memcmp(buf, line1, 74), 0, "line 1: %.74s", buf);
	rbb_chargen_fill(94 * 74, buf, 74);
	cr_assert_eq(memcmp(buf, line94, 74), 0, "line 94: %.74s", buf);
	/* Line 95 is line 0 again: the period is 95 lines, 7030 bytes. */
	cr_assert_eq(RBB_CHARGEN_PERIOD, 7030);
	rbb_chargen_fill(95 * 74, buf, 74);
	cr_assert_eq(memcmp(buf, line0, 74), 0);
	cr_assert_eq(rbb_chargen_byte(0), ' ', "a new connection's stream starts with ' '");
}

Test(chargen, every_byte_is_printable_or_crlf_in_place)
{
	for (uint64_t off = 0; off < 3 * RBB_CHARGEN_PERIOD; off++) {
		uint8_t b = rbb_chargen_byte(off);
		unsigned col = (unsigned)(off % 74);

		if (col == 72)
			cr_assert_eq(b, '\r', "offset %llu", (unsigned long long)off);
		else if (col == 73)
			cr_assert_eq(b, '\n', "offset %llu", (unsigned long long)off);
		else
			cr_assert(b >= 32 && b <= 126, "offset %llu: 0x%02x",
			          (unsigned long long)off, b);
		/* Within a line each character is the next one in the ring. */
		if (col > 0 && col < 72) {
			uint8_t prev = rbb_chargen_byte(off - 1);

			cr_assert_eq(b, prev == 126 ? 32 : prev + 1, "offset %llu",
			             (unsigned long long)off);
		}
	}
}

Test(chargen, fill_and_check_at_any_offset_and_length)
{
	static uint8_t buf[3 * RBB_CHARGEN_PERIOD + 100];
	const uint64_t offs[] = {0, 1, 73, 74, 7029, 7030, 7031, 123457, 1ull << 40};
	const size_t lens[] = {0, 1, 2, 74, 7029, 7030, 7031, sizeof(buf) - 1};

	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++)
		for (size_t j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
			uint64_t off = offs[i];
			size_t len = lens[j];

			buf[len] = 0xee;
			rbb_chargen_fill(off, buf, len);
			cr_assert_eq(buf[len], 0xee, "wrote past the end");
			for (size_t k = 0; k < len; k++)
				cr_assert_eq(buf[k], rbb_chargen_byte(off + k), "off %llu + %zu",
				             (unsigned long long)off, k);
			cr_assert_eq(rbb_chargen_check(off, buf, len), len);
			if (!len)
				continue;
			/* Damage the last byte, then a middle one: the first is found. */
			buf[len - 1] ^= 0x40;
			cr_assert_eq(rbb_chargen_check(off, buf, len), len - 1);
			buf[len / 2] ^= 0x01;
			cr_assert_eq(rbb_chargen_check(off, buf, len), len / 2);
		}
}

Test(chargen, a_shifted_stream_fails_at_once)
{
	uint8_t buf[200];

	/* One byte late (a dropped byte): every position differs. */
	rbb_chargen_fill(1, buf, sizeof(buf));
	cr_assert_eq(rbb_chargen_check(0, buf, sizeof(buf)), 0);
	/* Starting at line 1 ('!') instead of line 0 (' '). */
	rbb_chargen_fill(74, buf, sizeof(buf));
	cr_assert_eq(rbb_chargen_check(0, buf, sizeof(buf)), 0);
}

Test(chargen, where_names_line_and_column)
{
	char buf[64];

	cr_assert_str_eq(rbb_chargen_where(0, buf, sizeof(buf)), "line 0, column 0");
	cr_assert_str_eq(rbb_chargen_where(72, buf, sizeof(buf)), "line 0, column 72");
	cr_assert_str_eq(rbb_chargen_where(123457, buf, sizeof(buf)), "line 1668, column 25");
}
