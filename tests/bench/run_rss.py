"""Runs a command and reports the peak RSS of that one child (its ru_maxrss).

    python3 run_rss.py RESULT_FILE CMD [ARG ...]

The command's stdout/stderr pass through; afterwards `peak_rss_kib=N` and
`exit=N` are appended to RESULT_FILE. Exits with the command's status.
Used by bench.sh for both engines, so peak memory is measured the same way.
"""
import os
import sys


def main(argv):
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    result, cmd = argv[0], argv[1:]
    pid = os.fork()
    if pid == 0:
        try:
            os.execvp(cmd[0], cmd)
        except OSError as e:
            print("run_rss: %s: %s" % (cmd[0], e.strerror), file=sys.stderr)
        os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(result, "a") as f:
        f.write("peak_rss_kib=%d\nexit=%d\n" % (usage.ru_maxrss, code))
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
