# Install the built installer silently, run the installed app, uninstall, and check nothing is left:
#   pwsh packaging/windows/smoke.ps1
# What it checks: `morag-worker --version` and `--help` from the install; the tray app started
# offscreen logs "gui.ready" and then quits (Windows has no SIGTERM for a GUI process, so it is
# stopped the way the uninstaller stops it, with taskkill); the uninstaller removes the files, the
# Start-menu folder, the Run value and the Uninstall key, and leaves the person's settings.
$ErrorActionPreference = "Stop"
Set-Location (Join-Path $PSScriptRoot "..\..")
$Version = (Select-String -Path morag_worker\__init__.py -Pattern '^__version__ = "(.+)"').Matches[0].Groups[1].Value
$Setup = (Resolve-Path "dist\morag-worker-$Version-setup.exe").Path
$Dir = Join-Path $env:LOCALAPPDATA "Programs\MoRAG Worker"
$Exe = Join-Path $Dir "morag-worker.exe"
$RunKey = "HKCU:\Software\Microsoft\Windows\CurrentVersion\Run"
$UninstallKey = "HKCU:\Software\Microsoft\Windows\CurrentVersion\Uninstall\MoRAG Worker"
$Menu = Join-Path ([Environment]::GetFolderPath("Programs")) "MoRAG Worker"

function Assert($condition, $what) { if (-not $condition) { throw "smoke: $what" } }

Write-Host "smoke: silent install with start at login"
$p = Start-Process -FilePath $Setup -ArgumentList "/S", "/AUTOSTART=1" -Wait -PassThru
Assert ($p.ExitCode -eq 0) "the installer exited $($p.ExitCode)"
Assert (Test-Path $Exe) "$Exe is missing after the install"
Assert (Test-Path (Join-Path $Menu "MoRAG Worker.lnk")) "the Start-menu entry is missing"
Assert ((Get-ItemProperty $RunKey)."MoRAG Worker" -eq "`"$Exe`"") "the Run value is not the installed exe"
Assert ((Get-ItemProperty $UninstallKey).DisplayVersion -eq $Version) "the Uninstall key has no version"

Write-Host "smoke: --version and --help"
$out = & $Exe --version
Assert ($LASTEXITCODE -eq 0 -and "$out" -match [regex]::Escape($Version)) "--version said: $out"
$out = & $Exe --help
Assert ($LASTEXITCODE -eq 0 -and "$out" -match "no-gui") "--help said: $out"

Write-Host "smoke: the tray app, offscreen"
$config = Join-Path $env:RUNNER_TEMP "morag-smoke-config"
if (-not $env:RUNNER_TEMP) { $config = Join-Path $env:TEMP "morag-smoke-config" }
$env:QT_QPA_PLATFORM = "offscreen"
$env:PYTHON_KEYRING_BACKEND = "keyring.backends.null.Keyring"
$log = Join-Path $env:TEMP "morag-smoke-tray.log"
$tray = Start-Process -FilePath $Exe -ArgumentList "--config-dir", "`"$config`"", "--log-format", "json" `
  -RedirectStandardError $log -PassThru
$deadline = (Get-Date).AddSeconds(90)
while (-not ((Test-Path $log) -and (Select-String -Path $log -Pattern '"gui.ready"' -Quiet))) {
  Assert (-not $tray.HasExited) "the tray app exited $($tray.ExitCode) before it was ready: $(Get-Content $log -Raw)"
  Assert ((Get-Date) -lt $deadline) "the tray app was not ready within 90 s: $(Get-Content $log -Raw)"
  Start-Sleep -Milliseconds 250
}
& taskkill /PID $tray.Id /T /F | Out-Null
$tray.WaitForExit(30000) | Out-Null
Assert $tray.HasExited "the tray app did not quit"
Remove-Item Env:QT_QPA_PLATFORM

Write-Host "smoke: silent uninstall"
$p = Start-Process -FilePath (Join-Path $Dir "uninstall.exe") -ArgumentList "/S" -Wait -PassThru
Assert ($p.ExitCode -eq 0) "the uninstaller exited $($p.ExitCode)"
# The NSIS uninstaller copies itself to %TEMP% and returns at once; wait for the folder to go.
$deadline = (Get-Date).AddSeconds(60)
while ((Test-Path $Dir) -and (Get-Date) -lt $deadline) { Start-Sleep -Milliseconds 250 }
Assert (-not (Test-Path $Dir)) "$Dir is still there: $(Get-ChildItem -Recurse $Dir | Out-String)"
Assert (-not (Test-Path $Menu)) "the Start-menu folder is still there"
Assert (-not (Get-ItemProperty $RunKey)."MoRAG Worker") "the Run value is still there"
Assert (-not (Test-Path $UninstallKey)) "the Uninstall key is still there"
Write-Host "smoke: installed, ran, uninstalled; nothing left"
