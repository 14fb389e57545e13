"""The README's promises about the repository itself."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    text = (ROOT / "README.md").read_text()
    block = text.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip()]


def test_readme_starts_with_demo_and_test_commands():
    demo, tests = readme_commands()[:2]
    assert "revsnn.demo" in demo and "pytest" in tests
    assert "requirements.txt" in demo and "requirements.txt" in tests


def test_ci_runs_the_readme_test_command():
    assert readme_commands()[1] in (ROOT / ".ci" / "run").read_text()


def test_requirements_pin_torch():
    req = (ROOT / "requirements.txt").read_text()
    assert "torch==2.14.1" in req and "torchvision==0.29.1" in req
    assert '"torch>=2.11"' in (ROOT / "pyproject.toml").read_text()
