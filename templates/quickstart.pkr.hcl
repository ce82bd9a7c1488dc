# The quickstart: boot the tiny test base image under QEMU, provision it over SSH, and write the
# image to output-quickstart/. `scripts/kiln-quickstart.sh` makes the base image first.
#
# Run it yourself:  kiln build templates/quickstart.pkr.hcl

packer {
  required_version = ">= 1.7.0"
  required_plugins {
    qemu = {
      version = ">= 1.0.0"
      source  = "github.com/hashicorp/qemu"
    }
  }
}

variable "base_dir" {
  type        = string
  default     = ""
  description = "Directory with base.qcow2, vmlinux, initrd.img and id_ed25519 (default: tests/.cache/tiny)"
}

variable "message" {
  type    = string
  default = "built by kiln"
}

variable "memory" {
  type    = number
  default = 256
}

locals {
  base = var.base_dir != "" ? var.base_dir : "${path.root}/../tests/.cache/tiny"
}

source "qemu" "quickstart" {
  iso_url          = "${local.base}/base.qcow2"
  iso_checksum     = "none"
  disk_image       = true
  format           = "qcow2"
  accelerator      = "auto"
  memory           = var.memory
  cpus             = 1
  headless         = true
  kernel           = fileexists("${local.base}/vmlinux") ? "${local.base}/vmlinux" : "${local.base}/vmlinuz"
  initrd           = "${local.base}/initrd.img"
  kernel_args      = "root=/dev/vda rw console=ttyS0 quiet"
  output_directory = "output-quickstart"
  vm_name          = "quickstart.qcow2"

  communicator         = "ssh"
  ssh_username         = "root"
  ssh_private_key_file = "${local.base}/id_ed25519"
  ssh_timeout          = "2m"
  shutdown_command     = "sync; poweroff"
  shutdown_timeout     = "1m"
}

build {
  sources = ["source.qemu.quickstart"]

  provisioner "shell" {
    inline = [
      "echo '${var.message}' > /root/built.txt",
      "uname -r",
    ]
  }

  provisioner "file" {
    source      = "${path.root}/files/motd"
    destination = "/etc/motd"
  }

  post-processor "manifest" {
    output     = "output-quickstart.manifest.json"
    strip_path = true
  }
}
