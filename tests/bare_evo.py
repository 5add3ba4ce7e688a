"""`evo ARGS...` with the LLM operators, the knob operators, openai and libcst unimportable: what the
read-only commands (status, show) and export must work without (`python tests/bare_evo.py status RUN`)."""
import sys
from pathlib import Path

BLOCKED_PACKAGES = ("openai", "libcst", "evo.llm", "evo.operators")


class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if any(name == p or name.startswith(p + ".") for p in BLOCKED_PACKAGES):
            raise ImportError(f"{name} is blocked: this command must not need it")
        return None


def install_blocker() -> None:
    sys.meta_path.insert(0, _Blocker())


if __name__ == "__main__":
    install_blocker()
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from evo.cli import main

    sys.exit(main(sys.argv[1:]))
