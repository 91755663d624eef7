"""Release roles: the stable variant, the alias-move policy, rollouts that wait, measure and promote."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def mark_stable_variants(apps, schema_editor):  # type: ignore[no-untyped-def]
    """The variant with the most traffic (the oldest on a tie) of each deployment is its stable one."""
    Deployment = apps.get_model("deployments", "Deployment")
    Variant = apps.get_model("deployments", "Variant")
    for deployment_id in Deployment.objects.values_list("pk", flat=True):
        first = Variant.objects.filter(deployment_id=deployment_id).order_by("-weight", "id").first()
        if first is not None:
            Variant.objects.filter(pk=first.pk).update(role="stable")


class Migration(migrations.Migration):
    dependencies = [
        ("deployments", "0006_autoscaling"),
        ("registry", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name="deployment",
            name="on_alias_move",
            field=models.CharField(
                choices=[
                    ("rollout", "Start a guarded rollout"),
                    ("immediate", "Follow at once (recorded as forced)"),
                    ("manual", "Wait for a person"),
                ],
                default="rollout",
                help_text="when the alias of a variant that carries traffic moves",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="variant",
            name="role",
            field=models.CharField(
                choices=[("stable", "Stable"), ("candidate", "Candidate")], default="candidate", max_length=16
            ),
        ),
        migrations.AddField(
            model_name="variant",
            name="follow_note",
            field=models.TextField(blank=True, help_text="why it does not serve its alias' version"),
        ),
        migrations.RunPython(mark_stable_variants, migrations.RunPython.noop),
        migrations.AddConstraint(
            model_name="variant",
            constraint=models.UniqueConstraint(
                condition=models.Q(("role", "stable")),
                fields=("deployment",),
                name="one_stable_variant_per_deployment",
            ),
        ),
        migrations.RemoveConstraint(model_name="rollout", name="one_active_rollout_per_deployment"),
        migrations.AlterField(
            model_name="rollout",
            name="state",
            field=models.CharField(
                choices=[
                    ("waiting_for_replicas", "Waiting for a ready replica"),
                    ("running", "Running"),
                    ("paused", "Paused"),
                    ("promoting", "Promoting"),
                    ("succeeded", "Succeeded"),
                    ("rolled_back", "Rolled back"),
                    ("aborted", "Aborted"),
                    ("timed_out", "Timed out"),
                ],
                db_index=True,
                default="waiting_for_replicas",
                max_length=24,
            ),
        ),
        migrations.AddConstraint(
            model_name="rollout",
            constraint=models.UniqueConstraint(
                condition=models.Q(("state__in", ("waiting_for_replicas", "running", "paused", "promoting"))),
                fields=("deployment",),
                name="one_active_rollout_per_deployment",
            ),
        ),
        migrations.AlterField(
            model_name="rollout",
            name="min_requests",
            field=models.PositiveIntegerField(default=100, help_text="samples needed to judge a step"),
        ),
        migrations.AlterField(
            model_name="rollout",
            name="created_by",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to=settings.AUTH_USER_MODEL,
            ),
        ),
        migrations.AddField(
            model_name="rollout",
            name="version",
            field=models.ForeignKey(
                help_text="the version rolled out",
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="registry.modelversion",
            ),
        ),
        migrations.AddField(
            model_name="rollout",
            name="trigger",
            field=models.CharField(
                choices=[
                    ("user", "Started by a user"),
                    ("alias_move", "Alias moved"),
                    ("promote", "Promoted by a user"),
                ],
                default="user",
                max_length=16,
            ),
        ),
        migrations.AddField(
            model_name="rollout",
            name="forced",
            field=models.BooleanField(default=False, help_text="a person moved traffic past the guards"),
        ),
        migrations.AddField(
            model_name="rollout",
            name="replica_timeout_s",
            field=models.FloatField(default=600.0, help_text="wait for a ready candidate replica"),
        ),
        migrations.AddField(
            model_name="rollout",
            name="shadow_mark",
            field=models.JSONField(blank=True, default=dict, help_text="shadow counters at the step's start"),
        ),
        migrations.AddField(
            model_name="rollout",
            name="history",
            field=models.JSONField(
                blank=True, default=list, help_text="the evaluation that closed each step"
            ),
        ),
    ]
