# The tests that run on Windows: unit, GUI offscreen, and tests/windows (the threads pool over the
# control pipe, the Run key in the real registry, the key in the real Credential Manager).
#   pwsh packaging/windows/test.ps1
# Integration tests need redis-server, which Windows does not have; they run on Linux (.ci/run).
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$Python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
function Invoke-Checked { param([string]$Exe, [string[]]$Arguments)
  & $Exe @Arguments
  if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') exited $LASTEXITCODE" }
}
if (-not (Test-Path ".venv\Scripts\python.exe")) { Invoke-Checked $Python @("-m", "venv", ".venv") }
$py = ".venv\Scripts\python.exe"
Invoke-Checked $py @("-m", "pip", "install", "-q", "--require-hashes", "--only-binary", ":all:", "-r", "requirements\dev.lock")
Invoke-Checked $py @("-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", ".")
$env:QT_QPA_PLATFORM = "offscreen"
Invoke-Checked $py @("-m", "pytest", "-m", "unit or gui or windows", "tests/unit", "tests/gui", "tests/windows")
