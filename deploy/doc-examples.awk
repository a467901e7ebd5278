# Exits 0 when a doc comment of the Rust files given opens a code block that rustdoc compiles and
# runs as a documentation test (a fence with no language, `rust`, or only rustdoc's own
# attributes such as `no_run`); 1 when there is none. Blocks marked `text`, `sh`, `json` and so
# on are not tests.
FNR == 1 { open = 0 }
/^[[:space:]]*\/\/[\/!][[:space:]]*```/ {
  info = $0
  sub(/^[[:space:]]*\/\/[\/!][[:space:]]*```+[[:space:]]*/, "", info)
  if (open) { open = 0; next }
  open = 1
  n = split(info, words, /[ ,]+/)
  rust = 1
  for (i = 1; i <= n; i++) {
    if (words[i] !~ /^(rust|ignore|should_panic|no_run|compile_fail|test_harness|edition[0-9]+|)$/) rust = 0
  }
  if (rust) { print FILENAME ":" FNR ": a documentation test"; found = 1 }
}
END { exit !found }
