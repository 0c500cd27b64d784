# Build the Windows bundle and installer, as packaging/build.sh does on Linux:
#   pwsh packaging/windows/build.ps1            # dist\morag-worker\ and dist\morag-worker-<version>-setup.exe
# Needs Python 3.11 (py launcher or python on PATH) and NSIS (makensis; preinstalled on GitHub's
# Windows images, otherwise `choco install nsis` or `winget install NSIS.NSIS`).
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$Work = "build\packaging"
$Venv = "$Work\venv"
$Python = if ($env:PYTHON) { $env:PYTHON } else { "python" }
$Version = (Select-String -Path morag_worker\__init__.py -Pattern '^__version__ = "(.+)"').Matches[0].Groups[1].Value
$began = Get-Date

function Invoke-Checked { param([string]$Exe, [string[]]$Arguments)
  & $Exe @Arguments
  if ($LASTEXITCODE -ne 0) { throw "$Exe $($Arguments -join ' ') exited $LASTEXITCODE" }
}

# The build environment: exactly requirements/bundle.lock (its markers pick pywin32-ctypes, keyring's
# Windows backend), then the wheel of this checkout.
if (-not (Test-Path "$Venv\Scripts\python.exe")) { Invoke-Checked $Python @("-m", "venv", $Venv) }
$py = "$Venv\Scripts\python.exe"
Invoke-Checked $py @("-m", "pip", "install", "-q", "--require-hashes", "--only-binary", ":all:", "-r", "requirements\bundle.lock")
if (Test-Path "$Work\wheel") { Remove-Item -Recurse -Force "$Work\wheel" }
Invoke-Checked $py @("-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", "$Work\wheel", ".")
$wheel = (Get-ChildItem "$Work\wheel\morag_worker-*.whl")[0].FullName
Invoke-Checked $py @("-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", $wheel)

# Icons (morag-worker.ico for the exe and the installer), then the one-folder bundle.
$env:QT_QPA_PLATFORM = "offscreen"
Invoke-Checked $py @("packaging\icons.py", "$Work\icons")
Remove-Item Env:QT_QPA_PLATFORM
if (Test-Path "dist\morag-worker") { Remove-Item -Recurse -Force "dist\morag-worker" }
Invoke-Checked "$Venv\Scripts\pyinstaller.exe" @("--noconfirm", "--log-level", "WARN", "--distpath", "dist", "--workpath", "$Work\pyinstaller", "packaging\morag-worker.spec")
Invoke-Checked "dist\morag-worker\morag-worker.exe" @("--version")

# The installer.
$makensis = (Get-Command makensis -ErrorAction SilentlyContinue).Source
if (-not $makensis) { $makensis = "${env:ProgramFiles(x86)}\NSIS\makensis.exe" }
$root = (Get-Location).Path
Invoke-Checked $makensis @("/V2", "/INPUTCHARSET", "UTF8", "/DVERSION=$Version", "/DSRCDIR=$root\dist\morag-worker",
  "/DICON=$root\$Work\icons\morag-worker.ico", "/DOUTFILE=$root\dist\morag-worker-$Version-setup.exe",
  "packaging\windows\morag-worker.nsi")
$size = [math]::Round((Get-ChildItem "dist\morag-worker-$Version-setup.exe").Length / 1MB, 1)
Write-Host "build: dist\morag-worker-$Version-setup.exe, $size MB, $([int]((Get-Date) - $began).TotalSeconds) s"
